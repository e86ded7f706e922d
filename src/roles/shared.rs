//! [`Shared`]: what the handles of one connection (publisher, subscriber, their clones) observe
//! and control of its connection task: connected or not, the subscription rounds, a stop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

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
    /// The subscriber's `shutdown` began: messages arriving from now on run no handler.
    draining: AtomicBool,
    /// CONNACKs so far: the connection a message arrived on.
    epoch: AtomicU64,
    /// Messages handed to the worker whose handlers have not started yet.
    pub(crate) queued: AtomicUsize,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: watch::Sender::new(State::default()),
            stop: watch::Sender::new(false),
            closing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
        })
    }

    /// The connection task was spawned.
    pub(super) fn mark_started(&self) {
        self.state.send_modify(|state| state.started = true);
    }

    /// A receiver of the stop request.
    pub(super) fn stop_requests(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// One poll of the event loop returned (a publish may have ended).
    pub(super) fn polled(&self) {
        self.state
            .send_modify(|state| state.polls = state.polls.wrapping_add(1));
    }

    /// A CONNACK (a new connection, a new epoch) or a connection error.
    pub(super) fn set_connected(&self, connected: bool) {
        if connected {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.state.send_modify(|state| state.connected = connected);
    }

    /// Marks the task finished however it ends (also when its runtime drops it).
    pub(super) fn finish_on_drop(self: &Arc<Self>) -> Finished {
        Finished(Arc::clone(self))
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

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The subscriber takes no new messages (its `shutdown` began).
    pub(crate) fn begin_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops the task at once.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub(super) fn begin_round(&self, packets: Vec<Vec<Arc<str>>>) {
        self.state.send_modify(|state| {
            state.rounds += 1;
            state.outstanding = packets.into();
            state.refused.clear();
        });
    }

    pub(super) fn outstanding_subscriptions(&self) -> bool {
        !self.state.borrow().outstanding.is_empty()
    }

    /// Applies a SUBACK to the current round (a SUBACK that arrives while no round is waiting
    /// answers a subscription made through the client directly).
    pub(super) fn suback(&self, codes: &[Option<&'static str>]) {
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

/// Marks the task finished when dropped.
pub(super) struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.state.send_modify(|state| {
            state.finished = true;
            state.connected = false;
        });
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
