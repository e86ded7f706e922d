//! The part of the traced clients that does not depend on the MQTT version: publish spans and
//! their correlation with rumqttc events, context injection and extraction, and receive spans.
//! `v4` and `v5` translate rumqttc's types into calls on [`Core`].

pub(crate) mod connection;
pub(crate) mod correlation;

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use tokio::sync::oneshot;

use opentelemetry::global::BoxedSpan;
use opentelemetry::propagation::{Extractor, Injector};

use opentelemetry::trace::{Link, Span, SpanContext, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use rumqttc::Outgoing;

use crate::instrumentation::{Instrumentation, ParentMode, Propagator, Settings};
use crate::metrics::ConnectionGauges;
use crate::propagation::TraceparentError;
use crate::semconv::{
    ConnectionAttributes, ERROR_TYPE, MESSAGING_CLIENT_ID, MESSAGING_MQTT_DUPLICATE,
    MESSAGING_MQTT_PACKET_ID, MessageFacts, MqttQoS, Operation, SERVER_ADDRESS, SERVER_PORT,
};
use crate::topic::{TopicFilterSet, matching_filter, parse_shared};
pub(crate) use correlation::Signal;
use correlation::{Correlation, Failure, Resent, Step};

/// A publish span that has not ended yet, with what its metrics need.
#[derive(Debug)]
pub(crate) struct OpenPublish {
    span: BoxedSpan,
    pkid: Option<u16>,
    started: Instant,
    body_size: usize,
    /// Whether the PUBLISH was written (counted in `messaging.client.sent.messages`).
    written: bool,
    metric_attributes: Arc<[KeyValue]>,
    /// Told how the publish ended, for callers that wait for the acknowledgement.
    outcome: Option<oneshot::Sender<Result<(), &'static str>>>,
}

impl OpenPublish {
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
    handed_over: Result<Option<Outcome>, E>,
) -> Result<(), crate::Error> {
    match handed_over {
        Err(error) => Err(crate::Error::RequestRejected(error.to_string())),
        // An invalid topic that rumqttc accepted without a span: nothing to wait for.
        Ok(None) => Ok(()),
        Ok(Some(outcome)) => match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error_type)) => Err(crate::Error::PublishFailed(error_type)),
            Err(_) => Err(crate::Error::PublishFailed(
                correlation::Failure::EventLoopDropped.error_type(),
            )),
        },
    }
}

impl Signal {
    /// The signal of an outgoing event, if it concerns a publish.
    pub(crate) fn from_outgoing(outgoing: &Outgoing) -> Option<Self> {
        match outgoing {
            Outgoing::Publish(pkid) => Some(Self::Written(*pkid)),
            Outgoing::AwaitAck(pkid) => Some(Self::Parked(*pkid)),
            _ => None,
        }
    }
}

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
// Used by the publisher and subscriber roles, which land next.
#[allow(dead_code)]
#[derive(Debug)]
pub(crate) struct Processing {
    pub(crate) context: Context,
    started: Instant,
    metric_attributes: Arc<[KeyValue]>,
}

/// The state a traced client and its event loop share.
pub(crate) struct Core {
    pub(crate) settings: Arc<Settings>,
    pub(crate) connection: ConnectionAttributes,
    /// Server address and port (and the client id when opted in) for connection metrics.
    pub(crate) connection_metric_attributes: Vec<KeyValue>,
    /// What the connected / in-flight / pending gauges read.
    pub(crate) gauges: Arc<ConnectionGauges>,
    correlation: Mutex<Correlation<OpenPublish>>,
    /// Held while a publish is enqueued and sent, so the table's order is the channel's.
    send_lock: tokio::sync::Mutex<()>,
    /// The filters subscribed through the traced client, for receive span names.
    subscriptions: RwLock<TopicFilterSet<Arc<str>>>,
    /// Metric attribute sets by operation, QoS and template or subscription (bounded by the
    /// configured templates and the subscriptions; unused with raw topics in metrics).
    metric_cache: RwLock<HashMap<MetricKey, Arc<[KeyValue]>>>,
    /// When the core was made, and when (in ms since) the next overdue-ack sweep is due.
    created: Instant,
    next_sweep: std::sync::atomic::AtomicU64,
}

/// What a cached metric attribute set depends on.
type MetricKey = (Operation, MqttQoS, Option<Arc<str>>);

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// The most specific of several matching filters: fewest wildcards, then longest, then
/// alphabetical, so the choice never depends on the order filters were added in.
pub(crate) fn most_specific<'a, S: AsRef<str> + ?Sized + 'a>(
    filters: impl Iterator<Item = &'a S>,
) -> Option<&'a S> {
    filters.min_by(|a, b| {
        let (a, b) = (matching_filter(a.as_ref()), matching_filter(b.as_ref()));
        let wildcards = |f: &str| f.bytes().filter(|&c| c == b'+' || c == b'#').count();
        wildcards(a)
            .cmp(&wildcards(b))
            .then(b.len().cmp(&a.len()))
            .then(a.cmp(b))
    })
}

/// The payload size of a message as the application sees it.
fn publish_body_size(facts: &MessageFacts<'_>) -> usize {
    facts.body_size.unwrap_or_default()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held leaves the table as it was between two complete steps.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Core {
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
        Self {
            settings,
            connection_metric_attributes,
            gauges,
            connection,
            correlation: Mutex::new(Correlation::default()),
            send_lock: tokio::sync::Mutex::new(()),
            subscriptions: RwLock::new(TopicFilterSet::new()),
            metric_cache: RwLock::new(HashMap::new()),
            created: Instant::now(),
            next_sweep: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn attributes(&self, operation: Operation, facts: &MessageFacts<'_>) -> Vec<KeyValue> {
        let mut attributes = self.connection.span_attributes(operation, facts);
        for hook in &self.settings.hooks {
            hook(operation, facts, &mut attributes);
        }
        attributes
    }

    fn facts<'a>(&self, facts: MessageFacts<'a>, envelope_size: Option<usize>) -> MessageFacts<'a> {
        if self.settings.record_sizes {
            let body = facts.body_size;
            facts.with_sizes(body, envelope_size.or(body))
        } else {
            facts.with_sizes(None, None)
        }
    }

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
        let facts = self.facts(facts, None);
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
            started: Instant::now(),
            body_size,
            written: false,
            metric_attributes,
            outcome: None,
        };
        (open, parent)
    }

    /// The metric attributes of an operation on a message. Without raw topics they depend only
    /// on the operation, the QoS and the destination template (or subscription), so each set is
    /// built once per connection and shared.
    fn metric_attributes(
        &self,
        operation: Operation,
        facts: &MessageFacts<'_>,
        key: Option<Arc<str>>,
    ) -> Arc<[KeyValue]> {
        let build = || -> Arc<[KeyValue]> {
            self.connection
                .metric_attributes(operation, facts, self.settings.metric_topics)
                .into()
        };
        if self.settings.metric_topics {
            return build();
        }
        let key = (operation, facts.qos, key);
        let cached = self
            .metric_cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        cached.unwrap_or_else(|| {
            let attributes = build();
            self.metric_cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, Arc::clone(&attributes));
            attributes
        })
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

    /// Hands a publish to rumqttc: `send` sends the request; the open span is queued in the
    /// correlation table under the same lock, so the table's order is the channel's.
    pub(crate) async fn send_publish<E, F>(&self, open: OpenPublish, send: F) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let _order = self.send_lock.lock().await;
        lock(&self.correlation).enqueue(open);
        match send.await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.take_back(Failure::RequestFailed);
                Err(error)
            }
        }
    }

    /// Like [`Core::send_publish`] without waiting: when another task is sending, `send` is not
    /// called and `busy` turns the request into the error to return.
    pub(crate) fn try_send_publish<R, E>(
        &self,
        open: OpenPublish,
        request: R,
        send: impl FnOnce(R) -> Result<(), E>,
        busy: impl FnOnce(R) -> E,
    ) -> Result<(), E> {
        let Ok(_order) = self.send_lock.try_lock() else {
            self.finish(open, Err(Failure::RequestFailed));
            return Err(busy(request));
        };
        lock(&self.correlation).enqueue(open);
        send(request).inspect_err(|_| self.take_back(Failure::RequestFailed))
    }

    fn take_back(&self, failure: Failure) {
        let taken = lock(&self.correlation).unenqueue();
        if let Some(open) = taken {
            self.finish(open, Err(failure));
        }
    }

    /// Counts a publish as sent, once, when its PUBLISH is first written.
    fn written(&self, open: &mut OpenPublish) {
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
    fn finish(&self, mut open: OpenPublish, result: Result<(), Failure>) {
        let error_type = result.err().map(Failure::error_type);
        match error_type {
            // A QoS 0 publish ends when it is written.
            None => self.written(&mut open),
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

    /// Applies one rumqttc event handed out by the event loop to the publish spans.
    pub(crate) fn on_signal(&self, signal: Signal) {
        let finished = {
            let mut table = lock(&self.correlation);
            if table.skip_stale() {
                None
            } else {
                let step = table.apply(signal);
                self.after_step(&mut table, signal, step)
            }
        };
        if let Some((open, result)) = finished {
            self.finish(open, result);
        }
    }

    /// The connection broke; `queued` are the events rumqttc still holds, to hand out after the
    /// reconnect. Those not applied yet are applied now (a publish written, an acknowledgement
    /// read just before the end of the stream), so that a CONNACK without session finds the
    /// table as rumqttc's state really is.
    pub(crate) fn on_connection_lost(&self, queued: impl IntoIterator<Item = Signal>) {
        let mut finished = Vec::new();
        {
            let mut table = lock(&self.correlation);
            let already = table.stale_applied();
            for signal in queued.into_iter().skip(already) {
                let step = table.apply_stale(signal);
                finished.extend(self.after_step(&mut table, signal, step));
            }
        }
        for (open, result) in finished {
            self.finish(open, result);
        }
    }

    /// What one applied event means for the spans: the packet id of a written publish, the
    /// retransmission of a replayed one, or a span to end.
    fn after_step(
        &self,
        table: &mut Correlation<OpenPublish>,
        signal: Signal,
        step: Step<OpenPublish>,
    ) -> Option<(OpenPublish, Result<(), Failure>)> {
        match step {
            Step::Pending => {
                if let Signal::Written(pkid) = signal
                    && pkid != 0
                    && let Some(open) = table.awaiting_ack_mut(pkid)
                    && open.pkid.is_none()
                {
                    open.pkid = Some(pkid);
                    open.span
                        .set_attribute(KeyValue::new(MESSAGING_MQTT_PACKET_ID, i64::from(pkid)));
                    self.written(open);
                }
            }
            Step::Done(open, result) => return Some((open, result)),
            Step::Replayed(pkid) => {
                if let Some(open) = table.awaiting_ack_mut(pkid) {
                    open.span
                        .add_event("mqtt.publish.retransmitted", Vec::new());
                    open.span
                        .set_attribute(KeyValue::new(MESSAGING_MQTT_DUPLICATE, true));
                }
            }
        }
        None
    }

    /// Called after every poll of the event loop, whatever it returned: updates the in-flight
    /// and pending gauges, and ends the publish spans whose acknowledgement is overdue (at most
    /// one look per second).
    pub(crate) fn after_poll(&self, inflight: u64, pending: u64) {
        self.gauges
            .inflight
            .store(inflight, std::sync::atomic::Ordering::Relaxed);
        self.gauges
            .pending
            .store(pending, std::sync::atomic::Ordering::Relaxed);
        // One look per second: the clock is read here, the table locked only when it is due.
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.created).as_millis() as u64;
        if elapsed < self.next_sweep.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        self.next_sweep
            .store(elapsed + 1000, std::sync::atomic::Ordering::Relaxed);
        let expired = lock(&self.correlation).expire(now, self.settings.ack_timeout);
        for open in expired {
            self.finish(open, Err(Failure::AckTimeout));
        }
    }

    /// A CONNACK said the session is gone, and rumqttc dropped its `pending` queue, which held
    /// `unsent` publishes never written. With `requeue`, the traced event loop has put the
    /// requests back into `pending` in that order: their spans stay open. Everything else that
    /// waited ends with `session_lost`.
    pub(crate) fn on_session_lost(&self, unsent: usize, requeue: Option<&[Resent]>) {
        let lost = {
            let mut table = lock(&self.correlation);
            match requeue {
                Some(plan) => table.requeue(plan),
                None => table.on_session_lost(unsent),
            }
        };
        if let Some(plan) = requeue {
            self.settings
                .metrics
                .connection
                .record_resent(plan.len() as u64, &self.connection_metric_attributes);
        }
        for open in lost {
            self.finish(open, Err(Failure::SessionLost));
        }
    }

    /// Ends every open publish span (the event loop is going away).
    pub(crate) fn close(&self, failure: Failure) {
        let open = lock(&self.correlation).drain();
        for open in open {
            self.finish(open, Err(failure));
        }
    }

    /// Open publish spans (queued, in flight, or parked).
    pub(crate) fn open_publishes(&self) -> usize {
        lock(&self.correlation).len()
    }

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

    /// Starts the CONSUMER `process {filter}` span of a handler run on a delivered message.
    ///
    /// `filter` is the route's filter as subscribed (a `$share/{group}/` prefix gives the
    /// consumer group). The parent follows the [`ParentMode`], like the receive span's.
    #[allow(dead_code)]
    pub(crate) fn start_process(
        &self,
        delivery: &Delivery,
        filter: &str,
        facts: MessageFacts<'_>,
    ) -> Processing {
        let ambient = Context::current();
        let facts = self.facts(
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
    #[allow(dead_code)]
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

    /// Records the CLIENT `receive` span of a message handed out by the event loop, and returns
    /// what the application needs to continue the trace. `extractor` reads the propagation
    /// fields (none for a plain MQTT 3.1.1 payload); `problem` is what was wrong with the
    /// carrier (a malformed envelope), recorded as an event.
    pub(crate) fn receive(
        &self,
        facts: MessageFacts<'_>,
        envelope_size: Option<usize>,
        extractor: Option<&dyn Extractor>,
        problem: Option<&dyn Display>,
    ) -> Delivery {
        let ambient = Context::current();
        let mut traceparent_error: Option<TraceparentError> = None;
        let creation = extractor.map(|extractor| match &self.settings.propagator {
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
        let facts = self.facts(
            facts.with_template(template).with_consumer_group(group),
            envelope_size,
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
        if let Some(problem) = problem {
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
            metrics.record_body_size(publish_body_size(&facts), &metric_attributes);
        }
        Delivery {
            creation,
            receive,
            destination: subscription,
        }
    }
}

/// The `AsyncClient` methods that the traced clients of both MQTT versions forward unchanged
/// (acks, subscriptions, disconnect), recording subscribed filters for receive span names.
macro_rules! client_passthrough {
    ($client:ident, $qos:ty, $publish:ty, $filter:ty, $error:ty) => {
        impl $client {
            /// `AsyncClient::ack`, unchanged (manual acknowledgement of an incoming PUBLISH).
            pub async fn ack(&self, publish: &$publish) -> Result<(), $error> {
                self.inner.ack(publish).await
            }

            /// `AsyncClient::try_ack`, unchanged.
            pub fn try_ack(&self, publish: &$publish) -> Result<(), $error> {
                self.inner.try_ack(publish)
            }

            /// `AsyncClient::subscribe`; the filter names the receive spans of matching
            /// messages.
            pub async fn subscribe<S: Into<String>>(
                &self,
                topic: S,
                qos: $qos,
            ) -> Result<(), $error> {
                let topic = topic.into();
                self.core.subscribed(&topic);
                self.inner.subscribe(topic, qos).await
            }

            /// `AsyncClient::try_subscribe`.
            pub fn try_subscribe<S: Into<String>>(
                &self,
                topic: S,
                qos: $qos,
            ) -> Result<(), $error> {
                let topic = topic.into();
                self.core.subscribed(&topic);
                self.inner.try_subscribe(topic, qos)
            }

            /// `AsyncClient::subscribe_many`.
            pub async fn subscribe_many<T>(&self, topics: T) -> Result<(), $error>
            where
                T: IntoIterator<Item = $filter>,
            {
                let filters = self.remember(topics);
                self.inner.subscribe_many(filters).await
            }

            /// `AsyncClient::try_subscribe_many`.
            pub fn try_subscribe_many<T>(&self, topics: T) -> Result<(), $error>
            where
                T: IntoIterator<Item = $filter>,
            {
                let filters = self.remember(topics);
                self.inner.try_subscribe_many(filters)
            }

            /// `AsyncClient::unsubscribe`.
            pub async fn unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), $error> {
                let topic = topic.into();
                self.core.unsubscribed(&topic);
                self.inner.unsubscribe(topic).await
            }

            /// `AsyncClient::try_unsubscribe`.
            pub fn try_unsubscribe<S: Into<String>>(&self, topic: S) -> Result<(), $error> {
                let topic = topic.into();
                self.core.unsubscribed(&topic);
                self.inner.try_unsubscribe(topic)
            }

            /// `AsyncClient::disconnect`, unchanged.
            pub async fn disconnect(&self) -> Result<(), $error> {
                self.inner.disconnect().await
            }

            /// `AsyncClient::try_disconnect`, unchanged.
            pub fn try_disconnect(&self) -> Result<(), $error> {
                self.inner.try_disconnect()
            }

            /// The shared core (for the publisher and subscriber roles).
            #[allow(dead_code)]
            pub(crate) fn core(&self) -> &std::sync::Arc<crate::core::Core> {
                &self.core
            }

            fn remember<T: IntoIterator<Item = $filter>>(&self, topics: T) -> Vec<$filter> {
                let filters: Vec<$filter> = topics.into_iter().collect();
                for filter in &filters {
                    self.core.subscribed(&filter.path);
                }
                filters
            }
        }
    };
}
pub(crate) use client_passthrough;

/// Access to the wrapped event loop, and the end of open spans when the traced event loop is
/// dropped, for both MQTT versions.
macro_rules! eventloop_passthrough {
    ($eventloop:ident, $inner:ty) => {
        impl $eventloop {
            /// The wrapped rumqttc event loop (its options, state and `pending` queue).
            pub fn inner(&self) -> &$inner {
                &self.inner
            }

            /// The wrapped rumqttc event loop, mutably (for example to change its network
            /// options). Polling it directly bypasses the tracing of the events it returns.
            pub fn inner_mut(&mut self) -> &mut $inner {
                &mut self.inner
            }

            /// Publish spans not ended yet: queued, written and waiting for an
            /// acknowledgement, or parked on a packet-id collision.
            pub fn open_publish_spans(&self) -> usize {
                self.core.open_publishes()
            }

            /// The shared core (for the publisher and subscriber roles).
            #[allow(dead_code)]
            pub(crate) fn core(&self) -> &std::sync::Arc<crate::core::Core> {
                &self.core
            }

            /// Whether publishes rumqttc would drop when the broker forgets the session are put
            /// back and sent again (default `true`; see [`crate::reconnect`]).
            pub fn set_resend_after_session_loss(&mut self, resend: bool) -> &mut Self {
                self.resend_after_session_loss = resend;
                self
            }

            /// Waits between failed connection attempts (default: no wait, as rumqttc; see
            /// [`crate::reconnect`]).
            pub fn set_reconnect_backoff(
                &mut self,
                backoff: Option<crate::reconnect::ReconnectBackoff>,
            ) -> &mut Self {
                self.reconnect_backoff = backoff;
                self
            }
        }

        impl std::fmt::Debug for $eventloop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($eventloop))
                    .field("connected", &self.connection.is_connected())
                    .field("open_publish_spans", &self.open_publish_spans())
                    .finish_non_exhaustive()
            }
        }

        impl Drop for $eventloop {
            fn drop(&mut self) {
                self.connection.close(&self.core);
                self.core
                    .close(crate::core::correlation::Failure::EventLoopDropped);
            }
        }
    };
}
pub(crate) use eventloop_passthrough;

/// `poll` and `poll_traced` of the traced event loops of both MQTT versions: the same steps on
/// each version's types. The adapter provides `observe(&self, &mut Event) -> Option<Delivery>`
/// (publish signals and receive spans) and `error_type(&ConnectionError)`.
///
/// A new connection is detected from its CONNACK. rumqttc 3.1.1 returns the CONNACK from the
/// poll that connects; rumqttc 5 queues it behind events left from the previous connection, so it
/// is looked for in the event queue too (the newest one there is this connection's).
macro_rules! traced_poll {
    ($eventloop:ident, $event:ident, $packet:path, $pingresp:pat, $request:path, $publish:ty, $error:ty) => {
        impl $eventloop {
            /// Like rumqttc's `EventLoop::poll`: the same events and errors, in the same order
            /// (for MQTT 3.1.1, an incoming envelope is stripped from the payload).
            pub async fn poll(&mut self) -> Result<$event, $error> {
                self.poll_traced().await.map(|(event, _)| event)
            }

            /// Like [`Self::poll`], and for an incoming PUBLISH also the [`crate::Delivery`]: the
            /// producer's context (when the message carried one) and the receive span, to
            /// continue the trace in the application.
            pub async fn poll_traced(
                &mut self,
            ) -> Result<($event, Option<crate::Delivery>), $error> {
                use $packet as Packet;
                use $request as Request;
                let connecting = !self.connection.is_connected();
                if connecting
                    && let Some(backoff) = &self.reconnect_backoff
                    && let Some(failures) = self.connection.failed_attempts()
                {
                    tokio::time::sleep(backoff.delay(failures)).await;
                }
                // rumqttc drops `pending` when the CONNACK of this attempt has no session; keep
                // what it holds, and count the publishes in it that were never written.
                let (unsent, snapshot) = if connecting {
                    let unsent = self
                        .inner
                        .pending
                        .iter()
                        .filter(|request| matches!(request, Request::Publish(p) if p.pkid == 0))
                        .count();
                    let snapshot = self
                        .resend_after_session_loss
                        .then(|| self.inner.pending.clone());
                    (unsent, snapshot)
                } else {
                    (0, None)
                };
                if !connecting {
                    self.feed_held();
                }
                let result = self.inner.poll().await;
                self.core.after_poll(
                    u64::from(self.inner.state.inflight()),
                    self.inner.pending.len() as u64,
                );
                let mut event = match result {
                    Ok(event) => event,
                    Err(error) => {
                        if let Some(snapshot) = snapshot
                            && self.inner.pending.is_empty()
                        {
                            // A refused CONNACK without session: rumqttc cleared `pending`, but
                            // no session started; keep everything for the next attempt.
                            self.inner.pending = snapshot;
                        }
                        self.hold_unsent();
                        self.connection.on_error(&self.core, error_type(&error));
                        self.core.on_connection_lost(
                            self.inner.state.events.iter().filter_map(signal_of),
                        );
                        return Err(error);
                    }
                };
                if connecting {
                    let session_present = self
                        .inner
                        .state
                        .events
                        .iter()
                        .rev()
                        .chain(std::iter::once(&event))
                        .find_map(|queued| match queued {
                            $event::Incoming(Packet::ConnAck(connack)) => {
                                Some((connack.session_present, receive_maximum(connack)))
                            }
                            _ => None,
                        });
                    if let Some((session_present, receive_maximum)) = session_present {
                        self.receive_maximum = receive_maximum;
                        self.connection.on_connack(&self.core);
                        if !session_present {
                            self.session_lost(unsent, snapshot);
                        }
                    }
                }
                match &event {
                    $event::Incoming($pingresp) => self.connection.on_pingresp(&self.core),
                    $event::Outgoing(outgoing) => self.connection.on_outgoing(&self.core, outgoing),
                    _ => {}
                }
                let delivery = self.observe(&mut event);
                Ok((event, delivery))
            }

            /// The broker answered without a session and rumqttc cleared `pending`, which
            /// `snapshot` holds when resending is on: put its requests back (publishes with
            /// fresh packet ids), with the publish rumqttc parked on a collision, which it would
            /// otherwise wait for forever.
            fn session_lost(&mut self, unsent: usize, snapshot: Option<std::collections::VecDeque<$request>>) {
                use crate::core::correlation::Resent;
                use $request as Request;
                let mut collision = self.inner.state.collision.take();
                let Some(snapshot) = snapshot else {
                    self.core.on_session_lost(unsent, None);
                    return;
                };
                let mut plan = Vec::with_capacity(snapshot.len() + 1);
                let mut fresh = std::collections::VecDeque::with_capacity(snapshot.len() + 1);
                for request in snapshot {
                    match request {
                        Request::Publish(mut publish) => {
                            // The parked publish was taken from the channel before the requests
                            // still in it.
                            if publish.pkid == 0
                                && let Some(parked) = collision.take()
                            {
                                fresh.push_back(Self::fresh(parked));
                                plan.push(Resent::Collision);
                            }
                            plan.push(match publish.pkid {
                                0 => Resent::Unsent,
                                pkid => Resent::Inflight(pkid),
                            });
                            publish.pkid = 0;
                            fresh.push_back(Self::fresh(publish));
                        }
                        // Acknowledgements and pings of the session that is gone.
                        Request::PubAck(_)
                        | Request::PubRec(_)
                        | Request::PubComp(_)
                        | Request::PubRel(_)
                        | Request::PingReq { .. }
                        | Request::PingResp { .. }
                        | Request::SubAck(_)
                        | Request::UnsubAck(_) => {}
                        other => fresh.push_back(other),
                    }
                }
                if let Some(parked) = collision {
                    fresh.push_back(Self::fresh(parked));
                    plan.push(Resent::Collision);
                }
                // They go before what is already held: they were handed over earlier.
                fresh.extend(self.held.drain(..));
                self.held = fresh;
                self.core.on_session_lost(unsent, Some(&plan));
            }

            /// A publish to be sent as a new one: no packet id, no DUP flag.
            fn fresh(mut publish: $publish) -> $request {
                use $request as Request;
                publish.pkid = 0;
                publish.dup = false;
                Request::Publish(publish)
            }

            /// Whether `request` is a publish that takes a packet id when rumqttc sends it.
            fn takes_pkid(request: &$request) -> bool {
                use $request as Request;
                matches!(request, Request::Publish(publish) if publish.pkid == 0)
            }

            /// After a connection error rumqttc holds, in `pending`, the requests that were still
            /// in its channel. It would send them all at once after the reconnect, ignoring its
            /// in-flight limit, so that new packet ids collide with ones still in use, and it
            /// keeps only the last of several colliding publishes: the others are lost. They are
            /// taken out here, in order, and fed back one by one by [`Self::feed_held`].
            fn hold_unsent(&mut self) {
                use $request as Request;
                let mut pending = std::mem::take(&mut self.inner.pending);
                // The publish fed back before this poll, if rumqttc did not get to it, is older
                // than everything held.
                let fed = self.fed.take();
                let mut older = Vec::new();
                if let (Some(fed), Some(Request::Publish(publish))) = (&fed, pending.front())
                    && publish.pkid == 0
                    && publish.payload.as_ptr() == fed.as_ptr()
                    && publish.payload.len() == fed.len()
                {
                    older.extend(pending.pop_front());
                }
                let mut unsent = Vec::new();
                for request in pending {
                    match request {
                        // Replays of written publishes and releases keep their packet ids:
                        // rumqttc's own replay handles them.
                        Request::Publish(publish) if publish.pkid != 0 => {
                            self.inner.pending.push_back(Request::Publish(publish))
                        }
                        Request::PubRel(release) => {
                            self.inner.pending.push_back(Request::PubRel(release))
                        }
                        other => unsent.push(other),
                    }
                }
                let held = std::mem::take(&mut self.held);
                self.held = older.into_iter().chain(held).chain(unsent).collect();
            }

            /// Feeds held requests back to rumqttc: at most one publish that needs a packet id at
            /// a time, and only while the in-flight window has room and no publish is parked on a
            /// collision, so that rumqttc never collides twice.
            fn feed_held(&mut self) {
                use $request as Request;
                while let Some(front) = self.held.front() {
                    if Self::takes_pkid(front)
                        && (self.inner.pending.iter().any(Self::takes_pkid)
                            || self.inner.state.collision.is_some()
                            || self.inner.state.inflight() >= self.inflight_window())
                    {
                        break;
                    }
                    let Some(request) = self.held.pop_front() else {
                        break;
                    };
                    if let Request::Publish(publish) = &request {
                        self.fed = Some(publish.payload.clone());
                    }
                    self.inner.pending.push_back(request);
                }
            }
        }
    };
}
pub(crate) use traced_poll;

/// The `TracedClient` / `TracedEventLoop` pair of one MQTT version: the two structs, their
/// constructors and `inner()`. `$attributes` builds the connection attributes from the options.
macro_rules! traced_pair {
    ($rumqttc:literal, $client:ty, $eventloop:ty, $options:ty, $request:ty, $attributes:path) => {
        #[doc = concat!("A traced `", $rumqttc, "::AsyncClient`: every method of it, with the same")]
        /// signature and error type, plus a PRODUCER span per publish.
        ///
        /// Clones share one connection, one correlation table and one
        /// [`Instrumentation`](crate::Instrumentation).
        #[derive(Clone, Debug)]
        pub struct TracedClient {
            inner: $client,
            core: std::sync::Arc<crate::core::Core>,
        }

        #[doc = concat!("A traced `", $rumqttc, "::EventLoop`: [`TracedEventLoop::poll`] returns what")]
        /// rumqttc's does, and on the way ends publish spans at their acknowledgement, records a
        /// `receive` span for every incoming PUBLISH, and feeds the connection-health metrics.
        ///
        /// Dropping it ends every publish span still open with
        /// `error.type = event_loop_dropped`.
        pub struct TracedEventLoop {
            inner: $eventloop,
            core: std::sync::Arc<crate::core::Core>,
            /// Connection state for the health metrics, and whether the next poll connects.
            connection: crate::core::connection::ConnectionTracker,
            /// Put requests back after a session loss (on by default).
            resend_after_session_loss: bool,
            /// Wait between failed connection attempts (off by default).
            reconnect_backoff: Option<crate::reconnect::ReconnectBackoff>,
            /// Requests taken out of rumqttc's `pending` after a connection error, fed back
            /// within the in-flight window (see `traced_poll!`).
            held: std::collections::VecDeque<$request>,
            /// The payload of the publish last fed back, to recognise it in `pending`.
            fed: Option<bytes::Bytes>,
            /// The broker's Receive Maximum from the last CONNACK (MQTT 5).
            receive_maximum: Option<u16>,
        }

        impl TracedClient {
            #[doc = concat!("Like `", $rumqttc, "::AsyncClient::new`, with the default")]
            /// [`Instrumentation`](crate::Instrumentation) (global providers, built-in W3C
            /// propagator).
            pub fn new(options: $options, cap: usize) -> (TracedClient, TracedEventLoop) {
                Self::with_instrumentation(options, cap, crate::Instrumentation::default())
            }

            /// Like [`TracedClient::new`], with the given instrumentation.
            pub fn with_instrumentation(
                options: $options,
                cap: usize,
                instrumentation: crate::Instrumentation,
            ) -> (TracedClient, TracedEventLoop) {
                let connection = $attributes(&options);
                let core = std::sync::Arc::new(crate::core::Core::new(&instrumentation, connection));
                let (inner, eventloop) = <$client>::new(options, cap);
                (
                    TracedClient {
                        inner,
                        core: std::sync::Arc::clone(&core),
                    },
                    TracedEventLoop {
                        inner: eventloop,
                        core,
                        connection: crate::core::connection::ConnectionTracker::default(),
                        resend_after_session_loss: true,
                        reconnect_backoff: None,
                        held: std::collections::VecDeque::new(),
                        fed: None,
                        receive_maximum: None,
                    },
                )
            }

            /// The wrapped rumqttc client. Publishes sent through it directly are not traced,
            /// and they take a place in rumqttc's queue that the span correlation does not know
            /// about: use this client's own methods to publish.
            pub fn inner(&self) -> &$client {
                &self.inner
            }
        }
    };
}
pub(crate) use traced_pair;
