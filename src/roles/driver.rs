//! The connection task shared by the roles of one connection: it polls the traced event loop
//! without pause (keep-alive, acknowledgements, publish spans), reconnects after errors with a
//! growing pause, (re)subscribes the routes, and hands incoming messages to the worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::worker::{RouteTable, Work, shed};
use super::{Polled, Protocol};
use crate::core::{Core, Delivery};

/// The first pause before reconnecting after a connection error (rumqttc itself reconnects on
/// the next poll without any pause).
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest pause between two connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What the handles of a connection can observe of its task. Every change wakes the waiters.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The task was spawned.
    pub(crate) started: bool,
    /// A CONNACK was received and no error since.
    pub(crate) connected: bool,
    /// The task has ended (stopped, disconnected, or its runtime went away).
    pub(crate) finished: bool,
    /// Polls so far; a change means progress (a publish may have ended).
    polls: u64,
    /// Subscription rounds started so far (one per connection that needed the routes
    /// subscribed).
    pub(crate) rounds: u64,
    /// The SUBSCRIBE packets of the current round not yet acknowledged, oldest first, each with
    /// the route filters it carries.
    outstanding: VecDeque<Vec<Arc<str>>>,
    /// The route filters the broker refused in the current round, with the reason.
    pub(crate) refused: Vec<(Arc<str>, &'static str)>,
}

impl State {
    /// Whether the task runs.
    pub(crate) fn running(&self) -> bool {
        self.started && !self.finished
    }

    /// Whether the current round of subscriptions is complete.
    pub(crate) fn subscribed(&self) -> bool {
        self.rounds > 0 && self.outstanding.is_empty()
    }
}

/// State shared by a connection task and the handles of its roles.
#[derive(Debug)]
pub(crate) struct Shared {
    state: watch::Sender<State>,
    /// Set to stop the task at once (the socket closes without DISCONNECT).
    stop: watch::Sender<bool>,
    /// A clean shutdown is under way: the task ends at the next connection error instead of
    /// reconnecting.
    closing: AtomicBool,
    /// CONNACKs so far: the connection a message arrived on.
    epoch: AtomicU64,
    /// Messages handed to the worker and not yet taken by it.
    pub(crate) queued: AtomicUsize,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: watch::Sender::new(State::default()),
            stop: watch::Sender::new(false),
            closing: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
        })
    }

    /// A receiver of the state, to wait for a condition on it.
    pub(crate) fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.state.borrow().connected
    }

    /// The connection the next message will arrive on.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Asks the task to end at its next connection error or DISCONNECT.
    pub(crate) fn begin_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Stops the task at once.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn begin_round(&self, packets: Vec<Vec<Arc<str>>>) {
        self.state.send_modify(|state| {
            state.rounds += 1;
            state.outstanding = packets.into();
            state.refused.clear();
        });
    }

    fn outstanding_subscriptions(&self) -> bool {
        !self.state.borrow().outstanding.is_empty()
    }

    /// Applies a SUBACK to the current round (a SUBACK that arrives while no round is waiting
    /// answers a subscription made through the client directly).
    fn suback(&self, codes: &[Option<&'static str>]) {
        self.state.send_if_modified(|state| {
            let Some(filters) = state.outstanding.pop_front() else {
                return false;
            };
            for (filter, code) in filters.into_iter().zip(codes) {
                if let Some(reason) = code {
                    state.refused.push((filter, reason));
                }
            }
            true
        });
    }
}

/// Stops the connection task when the last handle of the connection goes away.
#[derive(Debug)]
pub(crate) struct DriverHandle {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for DriverHandle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// Marks the task finished however it ends (also when its runtime drops it).
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.state.send_modify(|state| {
            state.finished = true;
            state.connected = false;
        });
    }
}

/// Waits until a stop is requested (or nobody can request one any more).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The value is dropped at once: a watch reference must not be held across an await.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

/// Spawns the connection task.
///
/// Panics outside a Tokio runtime, like `tokio::spawn`.
pub(crate) fn spawn<P: Protocol>(
    client: P::Client,
    eventloop: P::EventLoop,
    shared: Arc<Shared>,
    dispatcher: Option<Dispatcher<P>>,
) {
    shared.state.send_modify(|state| state.started = true);
    tokio::spawn(drive::<P>(client, eventloop, shared, dispatcher));
}

async fn drive<P: Protocol>(
    client: P::Client,
    mut eventloop: P::EventLoop,
    shared: Arc<Shared>,
    mut dispatcher: Option<Dispatcher<P>>,
) {
    let _finished = Finished(Arc::clone(&shared));
    let mut stop = shared.stop.subscribe();
    let mut pause = RECONNECT_MIN;
    loop {
        let polled = tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            polled = P::poll(&mut eventloop) => polled,
        };
        shared
            .state
            .send_modify(|state| state.polls = state.polls.wrapping_add(1));
        match polled {
            Ok((event, delivery)) => match P::classify(event, delivery) {
                Polled::ConnAck {
                    session_present,
                    subscription_ids,
                } => {
                    pause = RECONNECT_MIN;
                    shared.epoch.fetch_add(1, Ordering::AcqRel);
                    shared.state.send_modify(|state| state.connected = true);
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
                shared.state.send_modify(|state| state.connected = false);
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
        client: &P::Client,
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
                if !P::subscribe(&client, filters, id).await {
                    break;
                }
            }
        });
    }

    /// Hands one incoming message to the worker (or records why it is not processed).
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
                if let Some(delivery) = &delivery {
                    for &index in &routes {
                        if let Some(route) = self.table.get(index) {
                            shed(&self.core, delivery, &route.filter, &view, self.capacity);
                        }
                    }
                }
                return;
            }
            routes
        };
        shared.queued.fetch_add(1, Ordering::AcqRel);
        let work = Work {
            publish,
            delivery,
            routes,
            epoch: shared.epoch(),
        };
        if self.queue.send(work).is_err() {
            // The worker is gone (the subscriber was dropped or is shutting down): the message is
            // neither processed nor acknowledged.
            shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|name| Arc::from(*name)).collect()
    }

    #[test]
    fn subacks_answer_the_round_in_order_and_name_refused_filters() {
        let shared = Shared::new();
        assert!(!shared.watch().borrow().subscribed(), "no round yet");
        shared.begin_round(vec![filters(&["a/#", "b/#"]), filters(&["c/#"])]);
        assert!(shared.outstanding_subscriptions());
        shared.suback(&[None, Some("not_authorized")]);
        {
            let state = shared.watch();
            let state = state.borrow();
            assert!(!state.subscribed());
            assert_eq!(state.refused, [(Arc::from("b/#"), "not_authorized")]);
        }
        shared.suback(&[None]);
        assert!(shared.watch().borrow().subscribed());
        // A SUBACK nobody waits for (a subscription made through the client) changes nothing.
        shared.suback(&[Some("failure")]);
        assert_eq!(shared.watch().borrow().refused.len(), 1);
        // A new round starts clean.
        shared.begin_round(vec![filters(&["a/#"])]);
        let state = shared.watch();
        let state = state.borrow();
        assert_eq!(state.rounds, 2);
        assert!(state.refused.is_empty());
        assert!(!state.subscribed());
    }

    #[test]
    fn dropping_the_last_handle_asks_the_task_to_stop() {
        let shared = Shared::new();
        let stop = shared.stop.subscribe();
        drop(DriverHandle {
            shared: Arc::clone(&shared),
        });
        assert!(*stop.borrow());
    }
}
