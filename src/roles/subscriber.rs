//! The version-independent half of `TracedSubscriber` and its builder.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::driver::{self, Dispatcher, DriverHandle, Shared};
use super::publisher::PublisherCore;
use super::worker::{Handler, Handlers, RouteTable, work};
use super::{AckPolicy, Protocol};
use crate::Error;
use crate::instrumentation::Instrumentation;

/// The default bound on queued QoS 0 messages.
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// A subscriber being set up: the connection exists (not yet connected), the routes are being
/// registered.
pub(crate) struct SubscriberBuilderCore<P: Protocol> {
    publisher: PublisherCore<P>,
    eventloop: P::EventLoop,
    table: RouteTable<P>,
    handlers: Handlers<P>,
    policy: AckPolicy,
    capacity: usize,
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
        let (client, eventloop) = P::pair(options, cap, instrumentation);
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
        }
    }

    pub(crate) fn client(&self) -> &P::Client {
        &self.publisher.client
    }

    pub(crate) fn publisher(&self) -> PublisherCore<P> {
        self.publisher.clone()
    }

    pub(crate) fn route(
        mut self,
        filter: &str,
        qos: P::QoS,
        handler: Handler<P>,
    ) -> Result<Self, Error> {
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
        } = self;
        let shared = Arc::clone(&publisher.driver.shared);
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
            policy,
            Arc::clone(&shared),
        ));
        let dispatcher = Dispatcher {
            core: Arc::clone(P::core(&publisher.client)),
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
    /// Messages received and not yet taken by the worker.
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

    /// Stops taking messages, lets the worker finish those already queued, then shuts the
    /// connection down like the publisher does.
    pub(crate) async fn shutdown(mut self) {
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
