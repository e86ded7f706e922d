//! The routes of a subscriber and the worker task that runs their handlers: up to `concurrency`
//! messages at a time (per topic in arrival order by default, see `super::schedule`), each
//! handler inside its `process` span and in a task of its own (so a panic is caught), then the
//! acknowledgements, in arrival order.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use opentelemetry::Context;
use opentelemetry::trace::{FutureExt as _, TraceContextExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::AckPolicy;
use super::handler::HandlerResult;
use super::schedule::{AckQueue, Lane, Order, RunQueue, Ticket};
use super::shared::Shared;
use crate::core::{
    Client, Core, Delivery, MetricSlots, Processing, Protocol, PublishView, SettleParent, logs,
};
use crate::error::Error;
use crate::semconv::MqttQoS;
use crate::topic::TopicFilterSet;

/// `error.type` of a handler that panicked.
pub(crate) const PANIC: &str = "panic";
/// `error.type` of a QoS 0 message shed because the handlers were too far behind.
pub(crate) const QUEUE_FULL: &str = "queue_full";
/// `error.type` of a handler run cancelled by the runtime (it is shutting down).
pub(crate) const CANCELLED: &str = "cancelled";
/// `error.type` of a message that arrived after `shutdown` began: no handler runs.
pub(crate) const SHUTTING_DOWN: &str = "shutting_down";

/// The boxed future of one handler run.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// A handler, type-erased.
pub(crate) type Handler<P> = Arc<dyn Fn(Incoming<P>) -> HandlerFuture + Send + Sync + 'static>;

/// What a handler is given: the message, the route it runs for, and the receive record.
pub(crate) struct Incoming<P: Protocol> {
    pub(crate) publish: P::Publish,
    pub(crate) route: Arc<str>,
    pub(crate) delivery: Delivery,
}

/// One registered route, as the connection task sees it (its handler lives in the worker only,
/// so that a handler holding a handle of the connection cannot keep the connection task alive).
pub(crate) struct Route<P: Protocol> {
    /// The filter as registered (and subscribed), `$share/{group}/` prefix included.
    pub(crate) filter: Arc<str>,
    pub(crate) qos: P::QoS,
    /// The metric sets of its `process` spans, built once per QoS.
    pub(crate) slots: MetricSlots,
}

/// The routes of a subscriber, in registration order, with a trie over their filters.
pub(crate) struct RouteTable<P: Protocol> {
    routes: Vec<Route<P>>,
    /// Filter -> index into `routes`.
    set: TopicFilterSet<usize>,
}

/// The handlers of the routes, by route index.
pub(crate) type Handlers<P> = Vec<Handler<P>>;

impl<P: Protocol> RouteTable<P> {
    pub(crate) fn new() -> Self {
        Self {
            routes: Vec::new(),
            set: TopicFilterSet::new(),
        }
    }

    /// Adds a route with its handler (a filter registered again gets the new QoS and
    /// handler).
    pub(crate) fn insert(
        &mut self,
        handlers: &mut Handlers<P>,
        filter: &str,
        qos: P::QoS,
        handler: Handler<P>,
    ) -> Result<(), Error> {
        let route = Route {
            filter: Arc::from(filter),
            qos,
            slots: MetricSlots::default(),
        };
        if let Some(&index) = self.set.get(filter)
            && let (Some(slot), Some(handler_slot)) =
                (self.routes.get_mut(index), handlers.get_mut(index))
        {
            *slot = route;
            *handler_slot = handler;
            return Ok(());
        }
        self.set.insert(filter, self.routes.len())?;
        self.routes.push(route);
        handlers.push(handler);
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Route<P>> {
        self.routes.get(index)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Route<P>)> {
        self.routes.iter().enumerate()
    }

    /// The MQTT 5 subscription identifier of the route at `index` (identifiers start at 1).
    pub(crate) fn subscription_id(index: usize) -> usize {
        index + 1
    }

    /// The routes a copy tagged with these subscription identifiers was delivered for, in
    /// registration order. Identifiers of subscriptions that are not routes are ignored, and so
    /// is a route whose filter does not match `topic`: a message queued in a persistent session
    /// before the routes changed carries the identifiers of the old subscriptions.
    pub(crate) fn by_ids(&self, ids: &[usize], topic: &str) -> Vec<usize> {
        let mut routes: Vec<usize> = ids
            .iter()
            .filter_map(|id| id.checked_sub(1))
            .filter(|&index| {
                self.routes
                    .get(index)
                    .is_some_and(|route| crate::topic::matches(topic, &route.filter))
            })
            .collect();
        routes.sort_unstable();
        routes.dedup();
        routes
    }

    /// The routes whose filter matches `topic`, in registration order.
    pub(crate) fn by_topic(&self, topic: &str) -> Vec<usize> {
        let mut routes: Vec<usize> = self.set.matches(topic).copied().collect();
        routes.sort_unstable();
        routes
    }

    /// The filters of the routes matching `topic`, in registration order.
    pub(crate) fn filters_for(&self, topic: &str) -> Vec<&str> {
        self.by_topic(topic)
            .into_iter()
            .filter_map(|index| self.routes.get(index))
            .map(|route| &*route.filter)
            .collect()
    }
}

/// One message for the worker.
pub(crate) struct Work<P: Protocol> {
    pub(crate) publish: P::Publish,
    pub(crate) delivery: Option<Delivery>,
    /// Indices of the routes to run, in order (none: acknowledge only).
    pub(crate) routes: Vec<usize>,
    /// The connection the message arrived on.
    pub(crate) epoch: u64,
}

/// Starts the `process` span of `filter` for a message. The receive span is the ambient
/// context: the process span's parent in [`crate::ParentMode::Link`] mode or when the message
/// carried no context, a link otherwise.
fn start_process<P: Protocol>(
    core: &Core,
    delivery: &Delivery,
    route: &Route<P>,
    view: &PublishView<'_>,
) -> Processing {
    let _ambient = Context::new()
        .with_remote_span_context(delivery.receive_span_context().clone())
        .attach();
    core.telemetry
        .start_process(delivery, &route.filter, &route.slots, view.facts())
}

/// Records a message that runs no handler: a `process` span (and process-duration measurement)
/// ending at once with `error_type` (a QoS 0 message shed with [`QUEUE_FULL`], a message that
/// arrived while shutting down with [`SHUTTING_DOWN`]) and `message` as its status.
pub(crate) fn not_processed<P: Protocol>(
    core: &Core,
    delivery: &Delivery,
    route: &Route<P>,
    view: &PublishView<'_>,
    error_type: &'static str,
    message: &dyn Display,
) {
    let processing = start_process(core, delivery, route, view);
    core.telemetry
        .end_process(processing, Some((error_type, message)));
}

/// Aborts a handler task when its run is abandoned (the worker is aborted).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The text of a panic payload.
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast_ref::<&'static str>() {
            Some(message) => (*message).to_owned(),
            None => "the handler panicked".to_owned(),
        },
    }
}

/// Runs one handler on one message inside its `process` span; `true` when it returned `Ok`.
async fn run<P: Protocol>(
    core: &Core,
    handler_span: bool,
    route: &Route<P>,
    handler: &Handler<P>,
    publish: &P::Publish,
    delivery: &Delivery,
) -> bool {
    let processing = start_process(core, delivery, route, &P::view(publish));
    let incoming = Incoming {
        publish: publish.clone(),
        route: Arc::clone(&route.filter),
        delivery: delivery.clone(),
    };
    let handler = Arc::clone(handler);
    // A task of its own, so that a panic ends this run only. The handler is called inside the
    // task, so a panic before its first await is caught too; the process context is current
    // whenever the task runs, and so when the `tracing` span is made: tracing-opentelemetry
    // takes it as that span's parent.
    let task = tokio::spawn(
        async move {
            if handler_span {
                let route = Arc::clone(&incoming.route);
                let span = tracing::info_span!(target: logs::TARGET, "handler", %route);
                handler(incoming).instrument(span).await
            } else {
                handler(incoming).await
            }
        }
        .with_context(processing.context.clone()),
    );
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(Ok(())) => {
            core.telemetry.end_process(processing, None);
            true
        }
        Ok(Err(failure)) => {
            core.telemetry.end_process(
                processing,
                Some((failure.error_type(), &failure.message() as &dyn Display)),
            );
            false
        }
        Err(error) if error.is_panic() => {
            let message = panic_message(error.into_panic());
            logs::handler_panicked(&core.telemetry, &route.filter, &message);
            core.telemetry
                .end_process(processing, Some((PANIC, &message as &dyn Display)));
            false
        }
        Err(_) => {
            core.telemetry.end_process(
                processing,
                Some((CANCELLED, &"the handler task was cancelled" as &dyn Display)),
            );
            false
        }
    }
}

/// How the worker runs handlers and acknowledges messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) policy: AckPolicy,
    /// Messages whose handlers run at the same time, at most (at least 1).
    pub(crate) concurrency: usize,
    pub(crate) order: Order,
    /// Each handler runs inside a `tracing` span `handler`.
    pub(crate) handler_span: bool,
}

/// A message whose handlers are to run.
struct Job<P: Protocol> {
    publish: P::Publish,
    delivery: Delivery,
    routes: Vec<usize>,
}

/// What a running message holds until its run ends.
struct Running {
    lane: Lane,
    /// Its place among the acknowledgements (QoS 1 and 2).
    ticket: Option<Ticket>,
}

/// What the handlers of one message share with the worker.
struct Runner<P: Protocol> {
    core: Arc<Core>,
    table: Arc<RouteTable<P>>,
    handlers: Handlers<P>,
    /// Whether each handler runs inside a `tracing` span (`handler_span`).
    handler_span: bool,
}

/// Runs the routes of one message one after the other, in registration order; gives the message
/// back (for its acknowledgement) with whether every handler returned `Ok`.
async fn run_routes<P: Protocol>(runner: Arc<Runner<P>>, job: Job<P>) -> (P::Publish, bool) {
    let mut succeeded = true;
    for &index in &job.routes {
        if let (Some(route), Some(handler)) = (runner.table.get(index), runner.handlers.get(index))
        {
            succeeded &= run::<P>(
                &runner.core,
                runner.handler_span,
                route,
                handler,
                &job.publish,
                &job.delivery,
            )
            .await;
        }
    }
    (job.publish, succeeded)
}

/// The worker: takes the messages in arrival order and runs the handlers of up to
/// `settings.concurrency` messages at a time, each message in a task of its own, in the order
/// `settings.order` allows; acknowledges them by `settings.policy`, in arrival order
/// ([`AckQueue`]). On `drain`, it stops taking new messages, runs those already queued, waits
/// for every run, sends the acknowledgements and ends.
pub(crate) async fn work<P: Protocol>(
    mut queue: mpsc::UnboundedReceiver<Work<P>>,
    mut drain: watch::Receiver<bool>,
    table: Arc<RouteTable<P>>,
    handlers: Handlers<P>,
    client: Client<P>,
    settings: Settings,
    shared: Arc<Shared>,
) {
    let runner = Arc::new(Runner {
        core: Arc::clone(client.core()),
        table,
        handlers,
        handler_span: settings.handler_span,
    });
    let limit = settings.concurrency.max(1);
    let mut waiting: RunQueue<(Job<P>, Option<Ticket>)> = RunQueue::new(settings.order);
    let mut acks: AckQueue<P::Publish> = AckQueue::new();
    // Dropping the set (the worker is aborted) aborts the runs, and with them their handlers.
    let mut runs: JoinSet<(P::Publish, bool)> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Running> = HashMap::new();
    let (mut open, mut draining) = (true, false);
    loop {
        while runs.len() < limit
            && let Some((lane, (job, ticket))) = waiting.pop()
        {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            let handle = runs.spawn(run_routes(Arc::clone(&runner), job));
            running.insert(handle.id(), Running { lane, ticket });
        }
        // Only on the connection the message came on (see `AckPolicy`).
        while let Some(publish) = acks.pop_ready(shared.epoch()) {
            // An error: the event loop is gone, and the message with it.
            let _ = match settings.policy {
                // A settle span, child of the message's receive span, as the process spans
                // have it for their ambient context.
                AckPolicy::AfterSuccess => client.ack(&publish, SettleParent::Receive).await,
                // Acknowledgements that are the subscriber's routine: no span per message.
                AckPolicy::AfterHandler => P::ack(client.inner(), &publish).await,
            };
        }
        if !open && runs.is_empty() && waiting.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(ended) = runs.join_next_with_id() => {
                let (id, outcome) = match ended {
                    Ok((id, outcome)) => (id, Some(outcome)),
                    // Only when the runtime shuts down: the message is not acknowledged.
                    Err(error) => (error.id(), None),
                };
                if let Some(Running { lane, ticket }) = running.remove(&id) {
                    waiting.finish(lane);
                    if let Some(ticket) = ticket {
                        let ack = outcome.and_then(|(publish, succeeded)| {
                            let acknowledge = match settings.policy {
                                AckPolicy::AfterHandler => true,
                                AckPolicy::AfterSuccess => succeeded,
                            };
                            acknowledge.then_some(publish)
                        });
                        acks.settle(ticket, ack);
                    }
                }
            }
            work = queue.recv(), if open => match work {
                Some(work) => accept(&mut waiting, &mut acks, &shared, work),
                None => open = false,
            },
            changed = drain.wait_for(|drain| *drain), if !draining => {
                drop(changed);
                draining = true;
                // No new message gets in; those already queued are still received.
                queue.close();
            }
            else => break,
        }
    }
}

/// Takes a message in: its place among the acknowledgements (QoS 1 and 2), then a place among
/// the waiting runs, or, when it runs nothing, its acknowledgement decided at once.
fn accept<P: Protocol>(
    waiting: &mut RunQueue<(Job<P>, Option<Ticket>)>,
    acks: &mut AckQueue<P::Publish>,
    shared: &Shared,
    work: Work<P>,
) {
    let (key, qos) = {
        let view = P::view(&work.publish);
        (waiting.key(&view.topic), view.qos)
    };
    let ticket = (qos != MqttQoS::AtMostOnce).then(|| acks.open(work.epoch));
    match work.delivery {
        Some(delivery) if !work.routes.is_empty() => {
            let job = Job {
                publish: work.publish,
                delivery,
                routes: work.routes,
            };
            waiting.push(key, (job, ticket));
        }
        // No route (or not a message the traced event loop recorded): acknowledged only.
        _ => {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            if let Some(ticket) = ticket {
                acks.settle(ticket, Some(work.publish));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v4::V4;
    use crate::v5::V5;

    fn handler<P: Protocol>() -> Handler<P> {
        Arc::new(|_| Box::pin(async { Ok(()) }))
    }

    fn table() -> RouteTable<V5> {
        let (mut table, mut handlers) = (RouteTable::new(), Vec::new());
        let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
        for filter in [
            "home/+/temperature",
            "home/#",
            "$share/g/home/#",
            "office/#",
        ] {
            table
                .insert(&mut handlers, filter, qos, handler())
                .expect("valid filter");
        }
        assert_eq!(handlers.len(), 4);
        table
    }

    #[test]
    fn by_topic_is_every_matching_route_in_registration_order() {
        let table = table();
        assert_eq!(table.by_topic("home/kitchen/temperature"), [0, 1, 2]);
        assert_eq!(table.by_topic("home"), [1, 2]);
        assert_eq!(table.by_topic("office"), [3]);
        assert!(table.by_topic("$SYS/x").is_empty());
        assert_eq!(table.filters_for("home/x"), ["home/#", "$share/g/home/#"]);
    }

    #[test]
    fn by_ids_keeps_known_matching_routes_once_in_order() {
        let table = table();
        assert_eq!(RouteTable::<V5>::subscription_id(0), 1);
        assert_eq!(table.by_ids(&[3, 1], "home/kitchen/temperature"), [0, 2]);
        assert_eq!(table.by_ids(&[2, 2], "home"), [1]);
        // Not a route (0 is no valid identifier, 9 is beyond the routes).
        assert!(table.by_ids(&[0, 9], "home").is_empty());
        // A stale identifier: route 4 is `office/#`, which does not match.
        assert!(table.by_ids(&[4], "home/x").is_empty());
        assert!(table.by_ids(&[], "home/x").is_empty());
    }

    #[test]
    fn registering_a_filter_again_replaces_its_route() {
        let (mut table, mut handlers) = (RouteTable::<V4>::new(), Vec::new());
        table
            .insert(&mut handlers, "a/#", rumqttc::QoS::AtMostOnce, handler())
            .expect("valid");
        table
            .insert(&mut handlers, "a/#", rumqttc::QoS::ExactlyOnce, handler())
            .expect("valid");
        assert_eq!(table.iter().count(), 1);
        assert_eq!(handlers.len(), 1);
        assert_eq!(
            table.get(0).map(|route| route.qos),
            Some(rumqttc::QoS::ExactlyOnce)
        );
        assert!(matches!(
            table.insert(&mut handlers, "a/#/b", rumqttc::QoS::AtMostOnce, handler()),
            Err(Error::Topic(_))
        ));
    }

    #[test]
    fn panic_payloads_become_messages() {
        assert_eq!(panic_message(Box::new("static text")), "static text");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(42_u8)), "the handler panicked");
    }
}
