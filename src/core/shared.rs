//! [`Core`]: what the traced client and the traced event loop of one connection share.

use crate::instrumentation::Instrumentation;
use crate::semconv::ConnectionAttributes;

use super::telemetry::Telemetry;
use super::tracking::{PublishTable, PublishTracker, publish_tracking};

/// The shared state of one connection: what its spans and metrics are made from, and its open
/// publish spans.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) telemetry: Telemetry,
    pub(crate) publishes: PublishTracker,
}

impl Core {
    /// The shared state of a new connection, and the publish table its event loop owns.
    pub(crate) fn new(
        instrumentation: &Instrumentation,
        connection: ConnectionAttributes,
    ) -> (Self, PublishTable) {
        let (publishes, table) = publish_tracking();
        let core = Self {
            telemetry: Telemetry::new(instrumentation, connection),
            publishes,
        };
        (core, table)
    }
}
