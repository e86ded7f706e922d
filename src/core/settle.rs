//! Settle spans: the CLIENT `ack {destination}` span and operation-duration measurement of a
//! manual acknowledgement, and the receive contexts of the messages that wait for one.
//!
//! # What is recorded
//!
//! With rumqttc's manual acknowledgements on (`MqttOptions::set_manual_acks(true)`), the
//! application acknowledges each QoS 1 or 2 message itself, with `ack(&publish)` (PUBACK for
//! QoS 1, PUBREC for QoS 2). Semconv v1.44 names that a settlement: operation type `settle`,
//! span kind CLIENT ("Span kind" table), here with the operation name `ack` and the span name
//! `ack {destination}` ("Span name": the destination template when known, else the topic), and
//! "'Settle' spans SHOULD be created for every manually or automatically triggered settlement
//! operation". The acknowledgement of a QoS 0 message is nothing (rumqttc sends no packet), so
//! it records nothing. rumqttc writes its automatic acknowledgements inside its event loop;
//! semconv's SHOULD covers those too, but this crate records none, by choice: the default path
//! would pay a span and a measurement per message for a settlement the application did not make
//! and the receive span already implies. With manual acknowledgements off nothing is recorded
//! and nothing is remembered per message (`AckPolicy::AfterHandler` of the subscriber likewise).
//!
//! # How the span relates to the message
//!
//! Semconv ("Consumer spans"): "For each message it accounts for, the 'Settle' span MAY link to
//! the creation context of the message." It says nothing of a parent, so the span follows the
//! general rule of a client span: its parent is the context current where `ack` is called (the
//! application's own span, or none), whatever the [`crate::ParentMode`] (which is about the
//! consumer spans, receive and process). It links to the message's `receive` span (at creation,
//! so a sampler sees it) and, when the message carried one, to its creation context (the
//! producer's span), unless that context is the parent or the receive span already. A
//! `TracedSubscriber` acknowledges from its worker, on behalf of the message: there the ambient
//! context is the message's receive span, as it is for the `process` spans, so the settle span is
//! a child of the receive span and links to the creation context.
//!
//! To find the receive span, the event loop remembers, per connection, the receive span context
//! of each incoming QoS 1 or 2 PUBLISH that waits for a manual acknowledgement, by packet id, and
//! the acknowledgement takes it out. A packet id names a message only on its connection: the map
//! is cleared when the connection ends (as the subscriber's epoch keeps an acknowledgement on
//! the connection its message came on), and an entry is taken only for the very message it was
//! made for (the same payload buffer and topic length: `Publish` clones share the buffer), so an
//! acknowledgement of a message of an earlier connection does not link to the message that now
//! has its packet id; it records its span without a link. (An empty payload has no buffer of its
//! own, so two messages with empty payloads, the same packet id and topics of one length are
//! told apart only by their connection.) A `Publish` the application rebuilds instead of the one
//! it was handed is not recognised either: its span has no link. The map holds one entry per
//! packet id at most (a new message with the packet id of an unacknowledged one replaces it; the
//! broker reuses a packet id only once it was acknowledged), so it is bounded by the broker's
//! window of unacknowledged messages per connection, and never above [`AWAITING_MAX`].
//!
//! # When the span ends
//!
//! When rumqttc took the acknowledgement into its request channel (`ack` returned), or could not
//! (its event loop is gone, or `try_ack` found the channel full): then the span ends as an error
//! with `error.type = request_failed`, as a refused publish does. rumqttc hands out
//! `Outgoing::PubAck(pkid)` / `Outgoing::PubRec(pkid)` from a later poll, after it wrote and
//! flushed the packet, but ending there would not be exact: rumqttc queues that event before the
//! write, so a write that fails still hands it out (after the reconnect); it silently drops a
//! PUBACK still in its channel when the connection breaks (`EventLoop::clean`), and its channel
//! is private, so which acknowledgements were lost is unknowable; a span waiting for the event
//! would then stay open or end by a guess. The operation duration is the span's: the wait for
//! room in rumqttc's channel.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanContext, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use super::consume::Delivery;
use super::correlation::Failure;
use super::protocol::{Protocol, PublishView};
use super::telemetry::{MetricSet, SpanStart, Telemetry};
use crate::hooks::EndContext;
use crate::semconv::{ERROR_TYPE, MqttQoS, Operation};
use crate::topic::{matching_filter, parse_shared};

/// The most messages waiting for an acknowledgement one connection remembers: the most a broker
/// may have unacknowledged at a client (MQTT 5 Receive Maximum, section 3.2.2.3.3; packet ids
/// are 16 bits).
pub(crate) const AWAITING_MAX: usize = u16::MAX as usize;

/// Where a settle span takes its parent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SettleParent {
    /// The context current where the acknowledgement is made (`TracedClient::ack`).
    Ambient,
    /// The message's receive span (the subscriber's worker, which acknowledges on behalf of the
    /// message), or the current context when it is not known.
    Receive,
}

/// Which message an entry was made for: the payload buffer the application was handed
/// (clones of a `Publish` share it), and the topic length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    payload: usize,
    payload_len: usize,
    topic_len: usize,
}

impl Identity {
    fn of(view: &PublishView<'_>) -> Self {
        Self {
            payload: view.payload.as_ptr() as usize,
            payload_len: view.payload.len(),
            topic_len: view.topic.len(),
        }
    }
}

/// A message that waits for its acknowledgement.
#[derive(Debug)]
struct Awaiting {
    identity: Identity,
    receive: SpanContext,
    creation: Option<SpanContext>,
}

/// The settlement state of one connection, shared by its client and event loop.
#[derive(Debug)]
pub(crate) struct Settlements {
    /// Acknowledgements are the application's (manual acknowledgements on; for a subscriber,
    /// `AckPolicy::AfterSuccess`): they record settle spans, and the event loop remembers the
    /// messages that wait for one.
    tracking: AtomicBool,
    /// By packet id, the messages of the current connection that wait for an acknowledgement.
    awaiting: Mutex<HashMap<u16, Awaiting>>,
}

/// A settle span (when the tracer records) and what its duration measurement needs.
pub(crate) struct OpenSettle {
    span: Option<BoxedSpan>,
    metrics: Arc<MetricSet>,
    started: Instant,
}

impl Settlements {
    /// The state of a new connection; `manual_acks` is rumqttc's option.
    pub(crate) fn new(manual_acks: bool) -> Self {
        Self {
            tracking: AtomicBool::new(manual_acks),
            awaiting: Mutex::new(HashMap::new()),
        }
    }

    fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// Whether acknowledgements record settle spans (a subscriber decides by its `AckPolicy`
    /// before its connection is first polled).
    pub(crate) fn set_tracking(&self, on: bool) {
        self.tracking.store(on, Ordering::Relaxed);
        if !on {
            self.connection_ended();
        }
    }

    fn awaiting(&self) -> MutexGuard<'_, HashMap<u16, Awaiting>> {
        self.awaiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The event loop handed out an incoming PUBLISH with its receive span: remembers it when
    /// the application will acknowledge it (QoS 1 or 2, manual acknowledgements, a tracer
    /// that records).
    pub(crate) fn received<P: Protocol>(
        &self,
        telemetry: &Telemetry,
        publish: &P::Publish,
        delivery: &Delivery,
    ) {
        if !self.is_tracking() || !telemetry.settings.tracing() {
            return;
        }
        let view = P::view(publish);
        if view.qos == MqttQoS::AtMostOnce {
            return;
        }
        let entry = Awaiting {
            identity: Identity::of(&view),
            receive: delivery.receive_span_context().clone(),
            creation: delivery
                .creation_context()
                .map(|context| context.span().span_context().clone()),
        };
        let mut awaiting = self.awaiting();
        if awaiting.len() < AWAITING_MAX || awaiting.contains_key(&view.pkid) {
            awaiting.insert(view.pkid, entry);
        }
    }

    /// The connection ended: its packet ids name nothing any more.
    pub(crate) fn connection_ended(&self) {
        let mut awaiting = self.awaiting();
        if !awaiting.is_empty() {
            *awaiting = HashMap::new();
        }
    }

    /// Takes out the entry of this very message, if there is one.
    fn take(&self, view: &PublishView<'_>) -> Option<Awaiting> {
        let mut awaiting = self.awaiting();
        let identity = Identity::of(view);
        match awaiting.get(&view.pkid) {
            Some(entry) if entry.identity == identity => awaiting.remove(&view.pkid),
            // Another message has this packet id now (or none waits for it).
            _ => None,
        }
    }

    /// Starts the settle span of an acknowledgement of `publish`, or `None` when there is nothing
    /// to record (QoS 0, or acknowledgements that are not the application's).
    pub(crate) fn start<P: Protocol>(
        &self,
        telemetry: &Telemetry,
        publish: &P::Publish,
        parent: SettleParent,
    ) -> Option<OpenSettle> {
        if !self.is_tracking() {
            return None;
        }
        let view = P::view(publish);
        if view.qos == MqttQoS::AtMostOnce {
            return None;
        }
        let awaiting = self.take(&view);
        let parent = match (parent, &awaiting) {
            (SettleParent::Receive, Some(entry)) if entry.receive.is_valid() => {
                Context::new().with_remote_span_context(entry.receive.clone())
            }
            _ => Context::current(),
        };
        let subscription = telemetry.subscription_for(&view.topic);
        let filter = subscription.as_deref().map(|s| &*s.filter);
        let facts = view
            .facts()
            .with_template(filter.map(matching_filter))
            .with_consumer_group(filter.and_then(parse_shared).map(|(group, _)| group))
            .with_sizes(None, None);
        let (receive, creation) = match awaiting {
            Some(entry) => links(&parent, entry),
            None => (None, None),
        };
        let mut span = telemetry.start_span(SpanStart {
            operation: Operation::Settle,
            destination: facts.destination(),
            facts: &facts,
            template: None,
            with_duplicate: true,
            parent: &parent,
            link: receive,
        });
        if let (Some(span), Some(creation)) = (&mut span, creation)
            && span.is_recording()
        {
            span.add_link(creation, Vec::new());
        }
        Some(OpenSettle {
            span,
            metrics: telemetry.settle_metrics(&facts, subscription.as_deref()),
            started: Instant::now(),
        })
    }
}

/// The links of a settle span: the receive span and the creation context, each only when valid
/// and not already the parent (or the other link).
fn links(parent: &Context, entry: Awaiting) -> (Option<SpanContext>, Option<SpanContext>) {
    let parent = parent.span().span_context().span_id();
    let receive =
        Some(entry.receive).filter(|receive| receive.is_valid() && receive.span_id() != parent);
    let creation = entry.creation.filter(|creation| {
        creation.is_valid()
            && creation.span_id() != parent
            && receive
                .as_ref()
                .is_none_or(|receive| receive.span_id() != creation.span_id())
    });
    (receive, creation)
}

impl OpenSettle {
    /// Ends the span and records the operation duration: successfully, or, when rumqttc did not
    /// take the acknowledgement, as `request_failed` with `error` as the status message.
    pub(crate) fn end(self, telemetry: &Telemetry, error: Option<&dyn Display>) {
        let error_type = error.map(|_| Failure::RequestFailed.error_type());
        if let Some(mut span) = self.span {
            if let (Some(error), Some(error_type)) = (error, error_type)
                && span.is_recording()
            {
                span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
                span.set_status(Status::error(error.to_string()));
            }
            if !telemetry.settings.on_end.is_empty() {
                let outcome = error_type.map_or(Ok(()), Err);
                telemetry.end_hooks(EndContext::owned(Operation::Settle, outcome, &mut span));
            }
            span.end();
        }
        self.metrics.record_duration(
            &telemetry.settings,
            Operation::Settle,
            self.started.elapsed(),
            error_type,
        );
    }
}

#[cfg(test)]
impl Settlements {
    /// Messages remembered as waiting for an acknowledgement.
    fn waiting(&self) -> usize {
        self.awaiting().len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use opentelemetry::trace::{SpanKind, TraceContextExt as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};

    use super::*;
    use crate::core::fake::{self, FakeEvent, FakeOptions, FakePublish, Setup};

    /// A fake connection, connected, with rumqttc's manual acknowledgements `manual_acks`.
    async fn connected(manual_acks: bool) -> Setup {
        let options = FakeOptions {
            limit: 10,
            manual_acks,
        };
        fake::connected(options, false).await
    }

    /// The event loop hands out an incoming PUBLISH on topic `in`; returns it and its receive
    /// span context.
    async fn receive(
        setup: &mut Setup,
        qos: MqttQoS,
        pkid: u16,
        payload: &'static str,
    ) -> (FakePublish, SpanContext) {
        let incoming = FakePublish {
            topic: "in".to_owned(),
            qos,
            pkid,
            dup: false,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        };
        setup
            .eventloop
            .inner_mut()
            .then(move |_| Ok(FakeEvent::Publish(incoming)));
        match setup.eventloop.poll_traced().await {
            Ok((FakeEvent::Publish(publish), Some(delivery))) => {
                (publish, delivery.receive_span_context().clone())
            }
            other => panic!("expected an incoming PUBLISH, got {other:?}"),
        }
    }

    /// Acknowledges `publish`; rumqttc (the fake) takes it.
    async fn ack(setup: &Setup, publish: &FakePublish, parent: SettleParent) {
        let acked = setup.client.ack(publish, parent).await;
        assert!(acked.is_ok(), "{acked:?}");
    }

    fn settle_spans(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
        let spans = exporter.get_finished_spans().unwrap_or_default();
        spans
            .into_iter()
            .filter(|span| span.name.starts_with("ack "))
            .collect()
    }

    fn linked(span: &SpanData) -> Vec<SpanContext> {
        span.links
            .iter()
            .map(|link| link.span_context.clone())
            .collect()
    }

    /// Semconv v1.44 "Span kind" (settle: CLIENT) and "Consumer spans" (a settle span is created
    /// for every manual settlement); this crate relates it to the message's receive span by a
    /// link, its parent being the ambient context (here none).
    #[tokio::test]
    async fn an_ack_records_a_settle_span_linked_to_its_receive_span() {
        let mut setup = connected(true).await;
        let (publish, receive) = receive(&mut setup, MqttQoS::AtLeastOnce, 7, "a").await;
        assert_eq!(setup.client.core().settlements.waiting(), 1);
        ack(&setup, &publish, SettleParent::Ambient).await;
        assert_eq!(
            setup.client.core().settlements.waiting(),
            0,
            "taken at the ack"
        );
        let spans = settle_spans(&setup.exporter);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        let span = &spans[0];
        assert_eq!(span.name, "ack in");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(linked(span), [receive]);
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(attribute("messaging.operation.type"), Some("settle".into()));
        assert_eq!(attribute("messaging.operation.name"), Some("ack".into()));
        assert_eq!(attribute("messaging.mqtt.packet_id"), Some(7_i64.into()));
    }

    /// The subscriber's worker acknowledges on behalf of the message: the receive span is the
    /// parent, and no link repeats it.
    #[tokio::test]
    async fn a_worker_ack_is_a_child_of_the_receive_span() {
        let mut setup = connected(true).await;
        let (publish, receive) = receive(&mut setup, MqttQoS::ExactlyOnce, 3, "b").await;
        ack(&setup, &publish, SettleParent::Receive).await;
        let spans = settle_spans(&setup.exporter);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        assert_eq!(spans[0].parent_span_id, receive.span_id());
        assert_eq!(spans[0].span_context.trace_id(), receive.trace_id());
        assert!(spans[0].links.is_empty(), "{:#?}", spans[0].links);
    }

    /// A packet id names a message on its connection only: after a reconnect, an ack of the old
    /// message does not take (or link to) the entry of the new message with its packet id.
    #[tokio::test]
    async fn an_ack_from_an_earlier_connection_links_to_nothing() {
        let mut setup = connected(true).await;
        let (old, _) = receive(&mut setup, MqttQoS::AtLeastOnce, 1, "old").await;
        setup
            .eventloop
            .inner_mut()
            .then(|el| el.break_connection())
            .then(|_| fake::connack(false));
        assert!(setup.eventloop.poll().await.is_err());
        assert_eq!(setup.client.core().settlements.waiting(), 0, "cleared");
        assert!(setup.eventloop.poll().await.is_ok());
        let (new, new_receive) = receive(&mut setup, MqttQoS::AtLeastOnce, 1, "new").await;
        ack(&setup, &old, SettleParent::Ambient).await;
        assert_eq!(
            setup.client.core().settlements.waiting(),
            1,
            "the new one waits"
        );
        ack(&setup, &new, SettleParent::Ambient).await;
        let spans = settle_spans(&setup.exporter);
        assert_eq!(spans.len(), 2, "{spans:#?}");
        assert!(linked(&spans[0]).is_empty(), "{:#?}", spans[0].links);
        assert_eq!(linked(&spans[1]), [new_receive]);
    }

    /// No settle span for QoS 0 (there is no acknowledgement), nor with rumqttc's automatic
    /// acknowledgements (nothing is remembered either).
    #[tokio::test]
    async fn nothing_for_qos_0_or_without_manual_acks() {
        let mut setup = connected(true).await;
        let (publish, _) = receive(&mut setup, MqttQoS::AtMostOnce, 0, "q0").await;
        assert_eq!(setup.client.core().settlements.waiting(), 0);
        ack(&setup, &publish, SettleParent::Ambient).await;
        let mut automatic = connected(false).await;
        let (publish, _) = receive(&mut automatic, MqttQoS::AtLeastOnce, 1, "q1").await;
        assert_eq!(automatic.client.core().settlements.waiting(), 0);
        ack(&automatic, &publish, SettleParent::Ambient).await;
        assert!(settle_spans(&setup.exporter).is_empty());
        assert!(settle_spans(&automatic.exporter).is_empty());
    }

    /// One entry per packet id: a new message with the packet id of one never acknowledged
    /// replaces it; turning tracking off forgets everything.
    #[tokio::test]
    async fn one_entry_per_packet_id() {
        let mut setup = connected(true).await;
        for payload in ["x", "y", "z"] {
            receive(&mut setup, MqttQoS::AtLeastOnce, 5, payload).await;
        }
        let settlements = &setup.client.core().settlements;
        assert_eq!(settlements.waiting(), 1);
        settlements.set_tracking(false);
        assert_eq!(settlements.waiting(), 0);
    }

    #[test]
    fn the_receive_link_is_dropped_when_it_is_the_parent() {
        let context = |id: u64| {
            SpanContext::new(
                opentelemetry::trace::TraceId::from(1_u128),
                opentelemetry::trace::SpanId::from(id),
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                Default::default(),
            )
        };
        let entry = |receive, creation| Awaiting {
            identity: Identity {
                payload: 0,
                payload_len: 0,
                topic_len: 0,
            },
            receive: context(receive),
            creation: Some(context(creation)),
        };
        let root = Context::new();
        assert_eq!(
            links(&root, entry(2, 3)),
            (Some(context(2)), Some(context(3)))
        );
        let under_receive = Context::new().with_remote_span_context(context(2));
        assert_eq!(links(&under_receive, entry(2, 3)), (None, Some(context(3))));
        // No receive span was recorded: the message's context stood in for it.
        assert_eq!(links(&root, entry(3, 3)), (Some(context(3)), None));
    }
}
