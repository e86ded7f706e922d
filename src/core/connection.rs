//! Connection health as the event loop sees it: attempts, reconnects, connection lifetime,
//! keep-alive round trips and the gauges, for both MQTT versions.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rumqttc::Outgoing;

use super::telemetry::Telemetry;

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
    pub(crate) fn on_connack(&mut self, telemetry: &Telemetry) {
        let metrics = &telemetry.settings.metrics.connection;
        metrics.record_connection_attempt(&telemetry.connection_metric_attributes, None);
        if self.ever_connected {
            metrics.record_reconnection(&telemetry.connection_metric_attributes);
        }
        self.ever_connected = true;
        self.failures = 0;
        self.ping_sent = None;
        self.state = State::Connected(Instant::now());
        telemetry.gauges.connected.store(1, Ordering::Relaxed);
    }

    /// Poll returned an error, classified as `error_type`.
    pub(crate) fn on_error(&mut self, telemetry: &Telemetry, error_type: &'static str) {
        let metrics = &telemetry.settings.metrics.connection;
        match self.state {
            State::Disconnected => {
                self.failures = self.failures.saturating_add(1);
                metrics.record_connection_attempt(
                    &telemetry.connection_metric_attributes,
                    Some(error_type),
                );
            }
            State::Connected(since) => {
                metrics.record_connection_end(
                    since.elapsed(),
                    &telemetry.connection_metric_attributes,
                    Some(error_type),
                );
            }
            State::Closing => {}
        }
        self.state = State::Disconnected;
        telemetry.gauges.connected.store(0, Ordering::Relaxed);
    }

    /// An outgoing event was handed out.
    pub(crate) fn on_outgoing(&mut self, telemetry: &Telemetry, outgoing: &Outgoing) {
        match outgoing {
            Outgoing::PingReq => self.ping_sent = Some(Instant::now()),
            Outgoing::Disconnect => self.close(telemetry),
            _ => {}
        }
    }

    /// A PINGRESP was handed out.
    pub(crate) fn on_pingresp(&mut self, telemetry: &Telemetry) {
        if let Some(sent) = self.ping_sent.take() {
            telemetry
                .settings
                .metrics
                .connection
                .record_keepalive_rtt(sent.elapsed(), &telemetry.connection_metric_attributes);
        }
    }

    /// The connection ends without error (DISCONNECT sent, or the event loop dropped).
    pub(crate) fn close(&mut self, telemetry: &Telemetry) {
        if let State::Connected(since) = self.state {
            telemetry.settings.metrics.connection.record_connection_end(
                since.elapsed(),
                &telemetry.connection_metric_attributes,
                None,
            );
            self.state = State::Closing;
        }
        telemetry.gauges.connected.store(0, Ordering::Relaxed);
    }
}
