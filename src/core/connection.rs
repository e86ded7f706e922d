//! Connection health as the event loop sees it: attempts, reconnects, connection lifetime,
//! keep-alive round trips and the gauges, for both MQTT versions.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rumqttc::Outgoing;

use super::Core;

/// The `error.type` of an I/O error of the connection.
pub(crate) fn io_error_type(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection_refused",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => "connection_reset",
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::NotFound => "address_unavailable",
        _ => "io",
    }
}

/// The `error.type` of a connection error that only exists with a rumqttc feature (TLS,
/// WebSocket, proxy), told apart by rumqttc's own message, since the variants exist only when
/// the application enables those features.
pub(crate) fn feature_error_type(message: &str) -> &'static str {
    if message.starts_with("TLS") {
        "tls"
    } else if message.starts_with("Websocket") || message.starts_with("Invalid Url") {
        "websocket"
    } else if message.starts_with("Proxy") {
        "proxy"
    } else {
        "connection_error"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; the next poll attempts a connection.
    Disconnected,
    /// Connected since the instant.
    Connected(Instant),
    /// The application sent DISCONNECT; the error that follows is the expected close.
    Closing,
}

/// Per-event-loop connection state feeding the connection-health metrics.
#[derive(Debug)]
pub(crate) struct ConnectionTracker {
    state: State,
    ever_connected: bool,
    ping_sent: Option<Instant>,
    /// Connection attempts that failed since the last success.
    failures: u32,
}

impl Default for ConnectionTracker {
    fn default() -> Self {
        Self {
            state: State::Disconnected,
            ever_connected: false,
            ping_sent: None,
            failures: 0,
        }
    }
}

impl ConnectionTracker {
    /// Whether the next poll uses an established connection (otherwise it connects first).
    pub(crate) fn is_connected(&self) -> bool {
        !matches!(self.state, State::Disconnected)
    }

    /// Consecutive failed connection attempts, when the last attempt failed.
    pub(crate) fn failed_attempts(&self) -> Option<u32> {
        (self.failures > 0).then_some(self.failures)
    }

    /// A CONNACK was handed out.
    pub(crate) fn on_connack(&mut self, core: &Core) {
        let metrics = &core.settings.metrics.connection;
        metrics.record_connection_attempt(&core.connection_metric_attributes, None);
        if self.ever_connected {
            metrics.record_reconnection(&core.connection_metric_attributes);
        }
        self.ever_connected = true;
        self.failures = 0;
        self.ping_sent = None;
        self.state = State::Connected(Instant::now());
        core.gauges.connected.store(1, Ordering::Relaxed);
    }

    /// Poll returned an error, classified as `error_type`.
    pub(crate) fn on_error(&mut self, core: &Core, error_type: &'static str) {
        let metrics = &core.settings.metrics.connection;
        match self.state {
            State::Disconnected => {
                self.failures = self.failures.saturating_add(1);
                metrics.record_connection_attempt(
                    &core.connection_metric_attributes,
                    Some(error_type),
                );
            }
            State::Connected(since) => {
                metrics.record_connection_end(
                    since.elapsed(),
                    &core.connection_metric_attributes,
                    Some(error_type),
                );
            }
            State::Closing => {}
        }
        self.state = State::Disconnected;
        core.gauges.connected.store(0, Ordering::Relaxed);
    }

    /// An outgoing event was handed out.
    pub(crate) fn on_outgoing(&mut self, core: &Core, outgoing: &Outgoing) {
        match outgoing {
            Outgoing::PingReq => self.ping_sent = Some(Instant::now()),
            Outgoing::Disconnect => self.close(core),
            _ => {}
        }
    }

    /// A PINGRESP was handed out.
    pub(crate) fn on_pingresp(&mut self, core: &Core) {
        if let Some(sent) = self.ping_sent.take() {
            core.settings
                .metrics
                .connection
                .record_keepalive_rtt(sent.elapsed(), &core.connection_metric_attributes);
        }
    }

    /// The connection ends without error (DISCONNECT sent, or the event loop dropped).
    pub(crate) fn close(&mut self, core: &Core) {
        if let State::Connected(since) = self.state {
            core.settings.metrics.connection.record_connection_end(
                since.elapsed(),
                &core.connection_metric_attributes,
                None,
            );
            self.state = State::Closing;
        }
        core.gauges.connected.store(0, Ordering::Relaxed);
    }
}
