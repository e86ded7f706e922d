//! [`EventLoop`]: the traced event loop, written once for both MQTT versions. It polls rumqttc's
//! event loop and, on the way, ends publish spans at their acknowledgement, records a receive
//! span per incoming PUBLISH (remembering it when the application will acknowledge it), feeds
//! the connection-health metrics, and recovers what rumqttc loses around reconnects.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::connection::ConnectionTracker;
use super::consume::Delivery;
use super::correlation::Failure;
use super::protocol::{EventView, Protocol};
use super::recovery::Recovery;
use super::shared::Core;
use super::tracking::PublishTable;
use crate::reconnect::ReconnectBackoff;

/// A traced rumqttc event loop of protocol `P`.
pub(crate) struct EventLoop<P: Protocol> {
    inner: P::EventLoop,
    core: Arc<Core>,
    /// The open publish spans, matched to rumqttc's events.
    publishes: PublishTable,
    /// Connection state for the health metrics, and whether the next poll connects.
    connection: ConnectionTracker,
    /// Held requests, session loss and resend.
    recovery: Recovery<P>,
    /// Wait between failed connection attempts (off by default).
    backoff: Option<ReconnectBackoff>,
    /// The `Delivery` of the PUBLISH the last poll handed out.
    delivery: Option<Delivery>,
    /// When the current wait between attempts ends: kept when a poll is dropped during it (a
    /// blocking `recv_timeout`, a `select!`), so that the next poll does not start it over.
    backoff_until: Option<tokio::time::Instant>,
}

impl<P: Protocol> EventLoop<P> {
    pub(crate) fn new(inner: P::EventLoop, core: Arc<Core>, publishes: PublishTable) -> Self {
        Self {
            inner,
            core,
            publishes,
            connection: ConnectionTracker::default(),
            recovery: Recovery::default(),
            backoff: None,
            delivery: None,
            backoff_until: None,
        }
    }

    /// rumqttc's event loop.
    pub(crate) fn inner(&self) -> &P::EventLoop {
        &self.inner
    }

    /// rumqttc's event loop, mutably.
    pub(crate) fn inner_mut(&mut self) -> &mut P::EventLoop {
        &mut self.inner
    }

    /// Publish spans not ended yet.
    pub(crate) fn open_publish_spans(&self) -> usize {
        self.core.publishes.open()
    }

    /// Whether requests rumqttc would drop after a session loss are sent again.
    pub(crate) fn set_resend_after_session_loss(&mut self, resend: bool) {
        self.recovery.resend = resend;
    }

    /// The wait between failed connection attempts.
    pub(crate) fn set_reconnect_backoff(&mut self, backoff: Option<ReconnectBackoff>) {
        self.backoff = backoff;
        self.backoff_until = None;
    }

    /// rumqttc's `poll`, traced.
    pub(crate) async fn poll(&mut self) -> Result<P::Event, P::ConnectionError> {
        let result = self.advance().await;
        self.delivery = None;
        result
    }

    /// rumqttc's `poll`, traced, with the [`Delivery`] of an incoming PUBLISH.
    pub(crate) async fn poll_traced(
        &mut self,
    ) -> Result<(P::Event, Option<Delivery>), P::ConnectionError> {
        let result = self.advance().await;
        let delivery = self.delivery.take();
        result.map(|event| (event, delivery))
    }

    /// One poll of rumqttc's event loop and what it means for the telemetry; the `Delivery` of
    /// an incoming PUBLISH is left in `self.delivery`. The event is handled where it lies, so
    /// that it is not copied about (rumqttc's events are several hundred bytes).
    ///
    /// A new connection is detected from its CONNACK. rumqttc 3.1.1 returns the CONNACK from
    /// the poll that connects; rumqttc 5 queues it behind events left from the previous
    /// connection, so it is looked for in the event queue too (the newest one there is this
    /// connection's).
    async fn advance(&mut self) -> Result<P::Event, P::ConnectionError> {
        let connecting = !self.connection.is_connected();
        if connecting
            && let Some(backoff) = &self.backoff
            && let Some(failures) = self.connection.failed_attempts()
        {
            let until = *self.backoff_until.get_or_insert_with(|| {
                let now = tokio::time::Instant::now();
                // tokio's own far future for a delay past what an Instant holds.
                let longest = Duration::from_secs(30 * 365 * 86_400);
                now.checked_add(backoff.delay(failures))
                    .unwrap_or(now + longest)
            });
            tokio::time::sleep_until(until).await;
            self.backoff_until = None;
        }
        let attempt = self.recovery.before_poll(&mut self.inner, connecting);
        let mut result = P::poll(&mut self.inner).await;
        let telemetry = &self.core.telemetry;
        let gauges = &telemetry.gauges;
        gauges
            .inflight
            .store(u64::from(P::inflight(&self.inner)), Ordering::Relaxed);
        gauges
            .pending
            .store(P::pending(&mut self.inner).len() as u64, Ordering::Relaxed);
        let event = match &mut result {
            Ok(event) => event,
            Err(error) => {
                self.publishes.after_poll(telemetry, true);
                P::connection_lost(telemetry, &mut self.inner);
                self.recovery.after_error(&mut self.inner, attempt);
                self.connection.on_error(telemetry, P::error_type(error));
                self.core.settlements.connection_ended();
                self.publishes.on_connection_lost(
                    telemetry,
                    P::queued_events(&self.inner)
                        .iter()
                        .filter_map(|queued| P::event(queued).signal()),
                );
                return result;
            }
        };
        if let Some(attempt) = attempt
            && let Some((session_present, receive_maximum, alias_maximum)) =
                P::queued_events(&self.inner)
                    .iter()
                    .rev()
                    .chain(std::iter::once(&*event))
                    .find_map(|queued| match P::event(queued) {
                        EventView::ConnAck {
                            session_present,
                            receive_maximum,
                            ..
                        } => Some((
                            session_present,
                            receive_maximum,
                            P::topic_alias_maximum(queued),
                        )),
                        _ => None,
                    })
        {
            if let Some(maximum) = alias_maximum {
                telemetry.aliases.connected(maximum);
            }
            self.connection.on_connack(telemetry);
            self.recovery.after_connack(
                &mut self.inner,
                telemetry,
                &mut self.publishes,
                session_present,
                receive_maximum,
                attempt,
            );
        }
        let (incoming, signal, keep_alive) = {
            let view = P::event(event);
            let keep_alive = match &view {
                // The broker's aliases of the old connection end here, after its last events.
                EventView::ConnAck { .. } => {
                    telemetry.aliases.new_incoming_connection();
                    false
                }
                EventView::PingResp => {
                    self.connection.on_pingresp(telemetry);
                    true
                }
                EventView::Outgoing(outgoing) => {
                    self.connection.on_outgoing(telemetry, outgoing);
                    matches!(outgoing, rumqttc::Outgoing::PingReq)
                }
                _ => false,
            };
            (
                matches!(view, EventView::Publish),
                view.signal(),
                keep_alive,
            )
        };
        if let Some(signal) = signal {
            self.publishes.on_signal(telemetry, signal);
        }
        self.publishes.after_poll(telemetry, keep_alive);
        if incoming && let Some(publish) = P::incoming_publish(event) {
            let delivery = P::receive(telemetry, publish);
            self.core
                .settlements
                .received::<P>(telemetry, publish, &delivery);
            self.delivery = Some(delivery);
        }
        result
    }
}

impl<P: Protocol> fmt::Debug for EventLoop<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedEventLoop")
            .field("connected", &self.connection.is_connected())
            .field("open_publish_spans", &self.open_publish_spans())
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Drop for EventLoop<P> {
    fn drop(&mut self) {
        let telemetry = &self.core.telemetry;
        self.connection.close(telemetry);
        self.publishes.close(telemetry, Failure::EventLoopDropped);
        self.core.settlements.connection_ended();
    }
}
