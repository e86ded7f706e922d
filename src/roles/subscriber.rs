//! The version-independent half of `TracedSubscriber` and its builder.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::AckPolicy;
use super::driver::{self, Dispatcher};
use super::handler::HandlerOutput;
use super::publisher::PublisherCore;
use super::schedule::Order;
use super::shared::{DriverHandle, Shared};
use super::worker::{Handler, Handlers, Incoming, RouteTable, Settings, work};
use crate::core::{Client, EventLoop, Protocol};
use crate::error::Error;
use crate::instrumentation::Instrumentation;

/// The default bound on waiting messages.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// The default number of messages whose handlers run at the same time.
pub(crate) const DEFAULT_CONCURRENCY: usize = 1;

/// A subscriber being set up: the connection exists (not yet connected), the routes are being
/// registered.
pub(crate) struct SubscriberBuilderCore<P: Protocol> {
    publisher: PublisherCore<P>,
    eventloop: EventLoop<P>,
    table: RouteTable<P>,
    handlers: Handlers<P>,
    policy: AckPolicy,
    capacity: usize,
    concurrency: usize,
    order: Order,
    handler_span: bool,
}

impl<P: Protocol> std::fmt::Debug for SubscriberBuilderCore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("client", &self.publisher.client)
            .field(
                "routes",
                &self
                    .table
                    .iter()
                    .map(|(_, route)| &*route.filter)
                    .collect::<Vec<_>>(),
            )
            .field("ack_policy", &self.policy)
            .field("queue_capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .field("ordered_per_topic", &(self.order == Order::PerTopic))
            .field("handler_span", &self.handler_span)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> SubscriberBuilderCore<P> {
    pub(crate) fn new(
        mut options: P::Options,
        cap: usize,
        instrumentation: Instrumentation,
    ) -> Self {
        P::enable_manual_acks(&mut options);
        let (client, eventloop) = Client::new(options, cap, &instrumentation);
        Self {
            publisher: PublisherCore {
                client,
                driver: Arc::new(DriverHandle {
                    shared: Shared::new(),
                }),
            },
            eventloop,
            table: RouteTable::new(),
            handlers: Vec::new(),
            policy: AckPolicy::default(),
            capacity: DEFAULT_QUEUE_CAPACITY,
            concurrency: DEFAULT_CONCURRENCY,
            order: Order::PerTopic,
            handler_span: false,
        }
    }

    pub(crate) fn client(&self) -> &Client<P> {
        &self.publisher.client
    }

    pub(crate) fn publisher(&self) -> PublisherCore<P> {
        self.publisher.clone()
    }

    /// Adds a route whose handler takes the version's message type `M`, made from each
    /// incoming message by `message`, and returns `()` or a `HandlerResult` (see
    /// `super::handler`).
    pub(crate) fn route<M, F, Fut, R>(
        mut self,
        filter: &str,
        qos: P::QoS,
        message: fn(Incoming<P>) -> M,
        handler: F,
    ) -> Result<Self, Error>
    where
        M: 'static,
        F: Fn(M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HandlerOutput,
    {
        let handler: Handler<P> = Arc::new(move |incoming| {
            let run = handler(message(incoming));
            Box::pin(async move { run.await.outcome() })
        });
        self.table
            .insert(&mut self.handlers, filter, qos, handler)?;
        Ok(self)
    }

    pub(crate) fn ack_policy(mut self, policy: AckPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub(crate) fn queue_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    pub(crate) fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub(crate) fn unordered(mut self) -> Self {
        self.order = Order::Unordered;
        self
    }

    pub(crate) fn handler_span(mut self, on: bool) -> Self {
        self.handler_span = on;
        self
    }

    /// How many QoS 1 and 2 messages the subscriber is ready to hold unacknowledged: the runs in
    /// flight and the waiting messages (MQTT 5 announces it as its Receive Maximum, section
    /// 3.1.2.11.3), at most 65,535.
    pub(crate) fn receive_window(&self) -> u16 {
        u16::try_from(self.concurrency.saturating_add(self.capacity)).unwrap_or(u16::MAX)
    }

    /// rumqttc's event loop, before the first connection (its options may still change).
    pub(crate) fn eventloop_mut(&mut self) -> &mut P::EventLoop {
        self.eventloop.inner_mut()
    }

    pub(crate) fn matching_routes(&self, topic: &str) -> Vec<&str> {
        self.table.filters_for(topic)
    }

    /// Spawns the worker and the connection task.
    pub(crate) fn start(self) -> SubscriberCore<P> {
        let Self {
            publisher,
            eventloop,
            table,
            handlers,
            policy,
            capacity,
            concurrency,
            order,
            handler_span,
        } = self;
        let shared = Arc::clone(&publisher.driver.shared);
        // Settle spans only for `AfterSuccess`; before the connection is first polled.
        publisher
            .client
            .core()
            .settlements
            .set_tracking(policy == AckPolicy::AfterSuccess);
        let has_routes = !table.is_empty();
        let table = Arc::new(table);
        let (queue, queued) = mpsc::unbounded_channel();
        let (drain, draining) = watch::channel(false);
        let worker = tokio::spawn(work::<P>(
            queued,
            draining,
            Arc::clone(&table),
            handlers,
            publisher.client.clone(),
            Settings {
                policy,
                concurrency,
                order,
                handler_span,
            },
            Arc::clone(&shared),
        ));
        let dispatcher = Dispatcher {
            core: Arc::clone(publisher.client.core()),
            table,
            queue,
            capacity,
            by_id: false,
            first: true,
        };
        driver::spawn::<P>(
            publisher.client.clone(),
            eventloop,
            shared,
            Some(dispatcher),
        );
        SubscriberCore {
            publisher,
            worker: Some(worker),
            drain,
            has_routes,
        }
    }
}

/// A running subscriber: the connection task and the worker.
pub(crate) struct SubscriberCore<P: Protocol> {
    pub(crate) publisher: PublisherCore<P>,
    worker: Option<JoinHandle<()>>,
    drain: watch::Sender<bool>,
    has_routes: bool,
}

impl<P: Protocol> std::fmt::Debug for SubscriberCore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("publisher", &self.publisher)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> SubscriberCore<P> {
    /// Messages received whose handlers have not started yet.
    pub(crate) fn queued(&self) -> usize {
        self.publisher
            .shared()
            .queued
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until the broker has answered the route subscriptions of the current connection.
    pub(crate) async fn subscribed(&self) -> Result<(), Error> {
        if !self.has_routes {
            return Ok(());
        }
        let mut state = self.publisher.shared().watch();
        let outcome = state
            .wait_for(|state| state.subscribed() || !state.running())
            .await
            .map(|state| {
                if !state.subscribed() {
                    return Err(Error::RequestRejected(
                        "the connection ended before the subscriptions were acknowledged"
                            .to_owned(),
                    ));
                }
                match state.refused.first() {
                    None => Ok(()),
                    Some((filter, reason)) => Err(Error::SubscriptionRefused {
                        filter: filter.to_string(),
                        reason: reason.to_string(),
                    }),
                }
            });
        outcome.unwrap_or_else(|_| {
            Err(Error::RequestRejected(
                "the connection task is gone".to_owned(),
            ))
        })
    }

    /// Stops taking messages, lets the worker run those already queued and finish every run
    /// (acknowledging in arrival order), then shuts the connection down like the publisher does.
    pub(crate) async fn shutdown(mut self) {
        // Before the first await: a message that arrives once `shutdown` was polled runs nothing.
        self.publisher.shared().begin_draining();
        self.drain.send_replace(true);
        if let Some(worker) = self.worker.take() {
            // An error means the worker was cancelled: nothing left to wait for.
            let _ = worker.await;
        }
        self.publisher.shutdown().await;
    }
}

impl<P: Protocol> Drop for SubscriberCore<P> {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}
