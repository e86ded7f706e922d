//! [`Core`]: what the traced client and the traced event loop of one connection share.

use crate::instrumentation::Instrumentation;
use crate::semconv::ConnectionAttributes;

use super::settle::Settlements;
use super::telemetry::Telemetry;
use super::tracking::{PublishTable, PublishTracker, publish_tracking};

/// The shared state of one connection: what its spans and metrics are made from, its open
/// publish spans, and the received messages that wait for a manual acknowledgement.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) telemetry: Telemetry,
    pub(crate) publishes: PublishTracker,
    pub(crate) settlements: Settlements,
}

impl Core {
    /// The shared state of a new connection, and the publish table its event loop owns;
    /// `manual_acks` is rumqttc's option (the application acknowledges incoming messages).
    pub(crate) fn new(
        instrumentation: &Instrumentation,
        connection: ConnectionAttributes,
        manual_acks: bool,
    ) -> (Self, PublishTable) {
        let (publishes, table) = publish_tracking();
        let core = Self {
            telemetry: Telemetry::new(instrumentation, connection),
            publishes,
            settlements: Settlements::new(manual_acks),
        };
        (core, table)
    }
}
