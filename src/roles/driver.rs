//! The connection task shared by the roles of one connection: it polls the traced event loop
//! without pause (keep-alive, acknowledgements, publish spans), reconnects after errors with a
//! growing pause, (re)subscribes the routes, and hands incoming messages to the worker.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::Outgoing;
use tokio::sync::{mpsc, watch};

use super::shared::Shared;
use super::worker::{QUEUE_FULL, RouteTable, SHUTTING_DOWN, Work, not_processed};
use crate::core::{Client, Core, Delivery, EventLoop, EventView, Protocol};

/// The first pause before reconnecting after a connection error (rumqttc itself reconnects on
/// the next poll without any pause).
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest pause between two connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Waits until a stop is requested (or nobody can request one any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The value is dropped at once: a watch reference must not be held across an await.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Spawns the connection task.
///
/// Panics outside a Tokio runtime, like `tokio::spawn`.
pub(crate) fn spawn<P: Protocol>(
    client: Client<P>,
    eventloop: EventLoop<P>,
    shared: Arc<Shared>,
    dispatcher: Option<Dispatcher<P>>,
) {
    shared.mark_started();
    tokio::spawn(drive::<P>(client, eventloop, shared, dispatcher));
}

/// A polled event, as far as the connection task cares.
enum Polled<P: Protocol> {
    /// A CONNACK; `subscription_ids` says whether the broker supports subscription identifiers.
    ConnAck {
        session_present: bool,
        subscription_ids: bool,
    },
    /// A SUBACK: per filter of the SUBSCRIBE, `None` when granted, else the refusal reason.
    SubAck(Vec<Option<&'static str>>),
    /// An incoming PUBLISH and what the traced event loop recorded for it.
    Publish(P::Publish, Option<Delivery>),
    /// The event loop wrote a DISCONNECT: the connection ends for good.
    Disconnect,
    /// Anything else.
    Other,
}

fn classify<P: Protocol>(event: P::Event, delivery: Option<Delivery>) -> Polled<P> {
    match P::event(&event) {
        EventView::ConnAck {
            session_present,
            subscription_ids,
            ..
        } => Polled::ConnAck {
            session_present,
            subscription_ids,
        },
        EventView::SubAck(codes) => Polled::SubAck(codes),
        EventView::Publish => match P::into_incoming_publish(event) {
            Some(publish) => Polled::Publish(publish, delivery),
            None => Polled::Other,
        },
        EventView::Outgoing(Outgoing::Disconnect) => Polled::Disconnect,
        _ => Polled::Other,
    }
}

async fn drive<P: Protocol>(
    client: Client<P>,
    mut eventloop: EventLoop<P>,
    shared: Arc<Shared>,
    mut dispatcher: Option<Dispatcher<P>>,
) {
    let _finished = shared.finish_on_drop();
    let mut stop = shared.stop_requests();
    let mut pause = RECONNECT_MIN;
    loop {
        let polled = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            polled = eventloop.poll_traced() => polled,
        };
        shared.polled();
        match polled {
            Ok((event, delivery)) => match classify::<P>(event, delivery) {
                Polled::ConnAck {
                    session_present,
                    subscription_ids,
                } => {
                    pause = RECONNECT_MIN;
                    shared.set_connected(true);
                    if let Some(dispatcher) = &mut dispatcher {
                        dispatcher.connected(&client, &shared, session_present, subscription_ids);
                    }
                }
                Polled::SubAck(codes) => shared.suback(&codes),
                Polled::Publish(publish, delivery) => {
                    if let Some(dispatcher) = &dispatcher {
                        dispatcher.dispatch(&shared, publish, delivery);
                    }
                }
                // A DISCONNECT was written (by `shutdown`, or by `disconnect` on a client of
                // this connection): the connection ends for good.
                Polled::Disconnect => break,
                Polled::Other => {}
            },
            Err(_) => {
                shared.set_connected(false);
                if shared.is_closing() {
                    break;
                }
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
    // Closes the socket and ends the publish spans still open.
    drop(eventloop);
}

/// The status message of a message that arrived after the subscriber's `shutdown` began: it is
/// neither processed nor acknowledged (a persistent session gets it again).
const NOT_TAKEN: &str = "not processed: the subscriber is shutting down";

/// The filters of one SUBSCRIBE packet, and its subscription identifier.
type SubscribePacket<P> = (Vec<(String, <P as Protocol>::QoS)>, Option<usize>);

/// Hands incoming messages to the worker: decides which routes a message is for, and
/// subscribes the routes on every connection that needs it.
pub(crate) struct Dispatcher<P: Protocol> {
    pub(crate) table: Arc<RouteTable<P>>,
    pub(crate) core: Arc<Core>,
    pub(crate) queue: mpsc::UnboundedSender<Work<P>>,
    /// QoS 0 messages beyond this many queued ones are not processed.
    pub(crate) capacity: usize,
    /// Dispatch by subscription identifier (MQTT 5 with a broker that supports them).
    pub(crate) by_id: bool,
    /// No connection yet.
    pub(crate) first: bool,
}

impl<P: Protocol> Dispatcher<P> {
    /// A connection was established: subscribes the routes when the broker does not have them
    /// (first connection, session not present, or a round left unanswered by a lost
    /// connection).
    fn connected(
        &mut self,
        client: &Client<P>,
        shared: &Shared,
        session_present: bool,
        subscription_ids: bool,
    ) {
        let resubscribe = self.first || !session_present || shared.outstanding_subscriptions();
        self.first = false;
        if !resubscribe || self.table.is_empty() {
            // A resumed session may also have been created without identifiers: keep the mode
            // of the round that made it.
            return;
        }
        self.by_id = P::SUBSCRIPTION_IDS && subscription_ids;
        let packets: Vec<SubscribePacket<P>> = if self.by_id {
            self.table
                .iter()
                .map(|(index, route)| {
                    (
                        vec![(route.filter.to_string(), route.qos)],
                        Some(RouteTable::<P>::subscription_id(index)),
                    )
                })
                .collect()
        } else {
            vec![(
                self.table
                    .iter()
                    .map(|(_, route)| (route.filter.to_string(), route.qos))
                    .collect(),
                None,
            )]
        };
        shared.begin_round(
            packets
                .iter()
                .map(|(filters, _)| filters.iter().map(|(f, _)| Arc::from(f.as_str())).collect())
                .collect(),
        );
        let client = client.clone();
        // Not awaited here: the poll loop must never wait for room in rumqttc's request queue.
        tokio::spawn(async move {
            for (filters, id) in packets {
                for (filter, _) in &filters {
                    client.subscribing(filter);
                }
                if P::subscribe(client.inner(), filters, id).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Hands one incoming message to the worker (or records why it is not processed).
    ///
    /// Never waits: the poll loop must go on (keep-alive, acknowledgements, the publishes of
    /// handlers). What the queue holds stays bounded all the same: QoS 0 messages beyond
    /// `capacity` waiting ones are shed here, and QoS 1 and 2 messages are bounded by the
    /// broker's in-flight window, because the worker acknowledges a message only once its
    /// handlers ran (see `SubscriberBuilderCore::receive_window`).
    fn dispatch(&self, shared: &Shared, publish: P::Publish, delivery: Option<Delivery>) {
        let routes = {
            let view = P::view(&publish);
            let routes = match &delivery {
                Some(_) if self.by_id => self
                    .table
                    .by_ids(P::subscription_ids(&publish), &view.topic),
                Some(_) => self.table.by_topic(&view.topic),
                // Not a message the traced event loop recorded: acknowledge it only.
                None => Vec::new(),
            };
            if view.qos == crate::semconv::MqttQoS::AtMostOnce
                && shared.queued.load(Ordering::Acquire) >= self.capacity
            {
                // At most once: the handlers are this far behind, so this one is shed, visibly.
                let message = format!(
                    "not processed: {} messages were already waiting",
                    self.capacity
                );
                self.not_processed(&publish, delivery.as_ref(), &routes, QUEUE_FULL, &message);
                return;
            }
            routes
        };
        if shared.is_draining() {
            self.not_processed(
                &publish,
                delivery.as_ref(),
                &routes,
                SHUTTING_DOWN,
                &NOT_TAKEN,
            );
            return;
        }
        shared.queued.fetch_add(1, Ordering::AcqRel);
        let work = Work {
            publish,
            delivery,
            routes,
            epoch: shared.epoch(),
        };
        if let Err(mpsc::error::SendError(work)) = self.queue.send(work) {
            // The worker is gone (the subscriber was dropped).
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.not_processed(
                &work.publish,
                work.delivery.as_ref(),
                &work.routes,
                SHUTTING_DOWN,
                &NOT_TAKEN,
            );
        }
    }

    /// Records, for each route of a message, that it runs no handler.
    fn not_processed(
        &self,
        publish: &P::Publish,
        delivery: Option<&Delivery>,
        routes: &[usize],
        error_type: &'static str,
        message: &dyn std::fmt::Display,
    ) {
        let Some(delivery) = delivery else { return };
        let view = P::view(publish);
        for &index in routes {
            if let Some(route) = self.table.get(index) {
                not_processed(&self.core, delivery, route, &view, error_type, message);
            }
        }
    }
}
