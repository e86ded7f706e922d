//! [`Core`]: what the traced client and the traced event loop of one connection share.

use crate::instrumentation::Instrumentation;
use crate::semconv::ConnectionAttributes;

use super::telemetry::Telemetry;
use super::tracking::PublishTracker;

/// The shared state of one connection: what its spans and metrics are made from, and its open
/// publish spans.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) telemetry: Telemetry,
    pub(crate) publishes: PublishTracker,
}

impl Core {
    pub(crate) fn new(instrumentation: &Instrumentation, connection: ConnectionAttributes) -> Self {
        Self {
            telemetry: Telemetry::new(instrumentation, connection),
            publishes: PublishTracker::default(),
        }
    }
}
