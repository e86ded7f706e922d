//! [`Client`]: the traced client, written once for both MQTT versions: a publish starts its span,
//! carries its context, and is handed to rumqttc in the order the event loop will see it;
//! subscriptions are remembered to name receive spans; a manual acknowledgement records its
//! settle span (`super::settle`).

use std::fmt;
use std::sync::Arc;

use super::aliases::{Address, Refusal, TopicAliases};
use super::event_loop::EventLoop;
use super::protocol::{Attempt, Protocol, PublishRequest};
use super::publish::{OpenPublish, confirmed};
use super::settle::SettleParent;
use super::shared::Core;
use crate::error::Error;
use crate::instrumentation::Instrumentation;
use crate::topic::{TopicError, topic_name_characters};

/// Why a publish was not started.
enum Refused {
    /// A topic name MQTT forbids (a wildcard, [MQTT-3.3.2-2], or U+0000, [MQTT-4.7.3-2]).
    TopicName(TopicError),
    /// A protocol error with the Topic Alias (MQTT 5).
    Alias(Refusal),
}

/// A traced rumqttc client of protocol `P`. Clones share one connection.
pub(crate) struct Client<P: Protocol> {
    inner: P::AsyncClient,
    core: Arc<Core>,
}

impl<P: Protocol> Clone for Client<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: Arc::clone(&self.core),
        }
    }
}

impl<P: Protocol> fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedClient")
            .field("inner", &self.inner)
            .field("connection", &self.core.telemetry.connection)
            .finish()
    }
}

impl<P: Protocol> Client<P> {
    /// A client and its event loop, like rumqttc's `AsyncClient::new`.
    pub(crate) fn new(
        options: P::Options,
        cap: usize,
        instrumentation: &Instrumentation,
    ) -> (Self, EventLoop<P>) {
        let (mut core, table) = Core::new(
            instrumentation,
            P::connection(&options),
            P::manual_acks(&options),
        );
        core.telemetry.aliases = TopicAliases::new(P::incoming_alias_maximum(&options));
        let core = Arc::new(core);
        let (inner, eventloop) = P::new_client(options, cap);
        let client = Self {
            inner,
            core: Arc::clone(&core),
        };
        (client, EventLoop::new(eventloop, core, table))
    }

    /// rumqttc's client.
    pub(crate) fn inner(&self) -> &P::AsyncClient {
        &self.inner
    }

    /// The state shared with the event loop.
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Publishes without waiting for the acknowledgement.
    pub(crate) async fn publish(
        &self,
        mut request: PublishRequest<P>,
    ) -> Result<(), P::ClientError> {
        match self.start(&mut request) {
            Ok((open, address)) => self.send(open, address, request).await,
            // Refused before it reaches the queue, as rumqttc refuses an invalid topic name;
            // there is nothing to trace.
            Err(_) => Err(P::refused(request, Attempt::Send)),
        }
    }

    /// Publishes and waits until the publish has ended, as its span does.
    pub(crate) async fn publish_confirmed(
        &self,
        mut request: PublishRequest<P>,
    ) -> Result<(), Error> {
        let (mut open, address) = match self.start(&mut request) {
            Ok(started) => started,
            Err(Refused::TopicName(error)) => {
                return Err(Error::RequestRejected(format!(
                    "invalid topic name {:?}: {error}",
                    request.topic
                )));
            }
            Err(Refused::Alias(refusal)) => {
                return Err(Error::RequestRejected(refusal.to_string()));
            }
        };
        let outcome = open.watch();
        confirmed(self.send(open, address, request).await.map(|()| outcome)).await
    }

    /// Checks the topic name (and the Topic Alias, MQTT 5), starts the span of a publish and
    /// carries its context in the request.
    fn start(&self, request: &mut PublishRequest<P>) -> Result<(OpenPublish, Address), Refused> {
        topic_name_characters(&request.topic).map_err(Refused::TopicName)?;
        let telemetry = &self.core.telemetry;
        let address = P::address(telemetry, request).map_err(Refused::Alias)?;
        let (mut open, parent) = telemetry.start_publish(
            address.aliased.as_deref().unwrap_or(&request.topic),
            P::request_correlation_data(request),
            request.qos.into(),
            request.retain,
            request.payload.len(),
        );
        P::carry(telemetry, &mut open, &parent, request);
        Ok((open, address))
    }

    /// Hands the request to rumqttc, in the table's order.
    async fn send(
        &self,
        open: OpenPublish,
        address: Address,
        request: PublishRequest<P>,
    ) -> Result<(), P::ClientError> {
        let telemetry = &self.core.telemetry;
        let order = self.core.publishes.order().await;
        order.hand_over(telemetry, open);
        let sent = P::send(&self.inner, request).await;
        if sent.is_err() {
            order.withdraw();
            telemetry.aliases.not_sent(&address);
        }
        sent
    }

    /// Publishes if rumqttc's request channel has room now.
    pub(crate) fn try_publish(&self, mut request: PublishRequest<P>) -> Result<(), P::ClientError> {
        let Ok((open, address)) = self.start(&mut request) else {
            return Err(P::refused(request, Attempt::TrySend));
        };
        let telemetry = &self.core.telemetry;
        // Another task is sending on a full queue: as busy as a full queue.
        let Some(order) = self.core.publishes.try_order() else {
            self.core.publishes.refused(telemetry, open);
            telemetry.aliases.not_sent(&address);
            return Err(P::refused(request, Attempt::TrySend));
        };
        order.hand_over(telemetry, open);
        let sent = P::try_send(&self.inner, request);
        if sent.is_err() {
            order.withdraw();
            telemetry.aliases.not_sent(&address);
        }
        sent
    }

    /// `AsyncClient::ack`: with manual acknowledgements on, the CLIENT `ack {destination}`
    /// settle span (parent by `parent`) and its duration measurement, ending when rumqttc took
    /// the acknowledgement or refused it.
    pub(crate) async fn ack(
        &self,
        publish: &P::Publish,
        parent: SettleParent,
    ) -> Result<(), P::ClientError> {
        let telemetry = &self.core.telemetry;
        let open = self.core.settlements.start::<P>(telemetry, publish, parent);
        let acked = P::ack(&self.inner, publish).await;
        if let Some(open) = open {
            open.end(
                telemetry,
                acked.as_ref().err().map(|e| e as &dyn fmt::Display),
            );
        }
        acked
    }

    /// `AsyncClient::try_ack`, with its settle span as [`Client::ack`].
    pub(crate) fn try_ack(&self, publish: &P::Publish) -> Result<(), P::ClientError> {
        let telemetry = &self.core.telemetry;
        let open = self
            .core
            .settlements
            .start::<P>(telemetry, publish, SettleParent::Ambient);
        let acked = P::try_ack(&self.inner, publish);
        if let Some(open) = open {
            open.end(
                telemetry,
                acked.as_ref().err().map(|e| e as &dyn fmt::Display),
            );
        }
        acked
    }

    /// Remembers a filter subscribed through this client: it names the receive spans of the
    /// messages it matches.
    pub(crate) fn subscribing(&self, filter: &str) {
        self.core.telemetry.subscribed(filter);
    }

    /// Remembers the filters of a `subscribe_many`.
    pub(crate) fn subscribing_many<T: IntoIterator<Item = P::Filter>>(
        &self,
        filters: T,
    ) -> Vec<P::Filter> {
        let filters: Vec<P::Filter> = filters.into_iter().collect();
        for filter in &filters {
            self.subscribing(P::filter_path(filter));
        }
        filters
    }

    /// Forgets a filter unsubscribed through this client.
    pub(crate) fn unsubscribing(&self, filter: &str) {
        self.core.telemetry.unsubscribed(filter);
    }
}
