//! [`Telemetry`]: what the spans and metrics of one connection are made from: the settings, the
//! connection's attributes, the filters it subscribed, and metric attribute sets built once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use opentelemetry::KeyValue;

use crate::instrumentation::{Instrumentation, Settings};
use crate::metrics::ConnectionGauges;
use crate::semconv::{
    ConnectionAttributes, MESSAGING_CLIENT_ID, MessageFacts, MqttQoS, Operation, SERVER_ADDRESS,
    SERVER_PORT,
};
use crate::topic::TopicFilterSet;

/// What a cached metric attribute set depends on.
type MetricKey = (Operation, MqttQoS, Option<Arc<str>>);

/// The telemetry of one connection, shared by its traced client and event loop.
pub(crate) struct Telemetry {
    pub(crate) settings: Arc<Settings>,
    pub(crate) connection: ConnectionAttributes,
    /// Server address and port (and the client id when opted in) for connection metrics.
    pub(crate) connection_metric_attributes: Vec<KeyValue>,
    /// What the connected / in-flight / pending gauges read.
    pub(crate) gauges: Arc<ConnectionGauges>,
    /// The filters subscribed through the traced client, for receive span names.
    pub(super) subscriptions: RwLock<TopicFilterSet<Arc<str>>>,
    /// Metric attribute sets by operation, QoS and template or subscription (bounded by the
    /// configured templates and the subscriptions; unused with raw topics in metrics).
    metric_cache: RwLock<HashMap<MetricKey, Arc<[KeyValue]>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    pub(crate) fn new(instrumentation: &Instrumentation, connection: ConnectionAttributes) -> Self {
        let settings = Arc::clone(&instrumentation.inner);
        let mut connection_metric_attributes = vec![
            KeyValue::new(SERVER_ADDRESS, connection.server().host().to_owned()),
            KeyValue::new(SERVER_PORT, i64::from(connection.server().port())),
        ];
        if settings.metric_client_id {
            connection_metric_attributes.push(KeyValue::new(
                MESSAGING_CLIENT_ID,
                connection.client_id().to_owned(),
            ));
        }
        let gauges = settings
            .metrics
            .connection
            .register(connection_metric_attributes.clone());
        Self {
            settings,
            connection,
            connection_metric_attributes,
            gauges,
            subscriptions: RwLock::new(TopicFilterSet::new()),
            metric_cache: RwLock::new(HashMap::new()),
        }
    }

    /// The span attributes of `operation` on a message, with what the hooks add.
    pub(super) fn attributes(
        &self,
        operation: Operation,
        facts: &MessageFacts<'_>,
    ) -> Vec<KeyValue> {
        // A publish span records `messaging.mqtt.duplicate` when it ends (see `finish`).
        let with_duplicate = operation != Operation::Publish;
        let mut attributes = self
            .connection
            .span_attributes_with(operation, facts, with_duplicate);
        for hook in &self.settings.hooks {
            hook(operation, facts, &mut attributes);
        }
        attributes
    }

    /// `facts` with the opt-in sizes kept only when the instrumentation records them.
    pub(super) fn sized<'a>(
        &self,
        facts: MessageFacts<'a>,
        envelope_size: Option<usize>,
    ) -> MessageFacts<'a> {
        if self.settings.record_sizes {
            let body = facts.body_size;
            facts.with_sizes(body, envelope_size.or(body))
        } else {
            facts.with_sizes(None, None)
        }
    }

    /// The metric attributes of an operation on a message. Without raw topics they depend only
    /// on the operation, the QoS and the destination template (or subscription), so each set is
    /// built once per connection and shared.
    pub(super) fn metric_attributes(
        &self,
        operation: Operation,
        facts: &MessageFacts<'_>,
        key: Option<Arc<str>>,
    ) -> Arc<[KeyValue]> {
        let build = || -> Arc<[KeyValue]> {
            self.connection
                .metric_attributes(operation, facts, self.settings.metric_topics)
                .into()
        };
        if self.settings.metric_topics {
            return build();
        }
        let key = (operation, facts.qos, key);
        let cached = self
            .metric_cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        cached.unwrap_or_else(|| {
            let attributes = build();
            self.metric_cache
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, Arc::clone(&attributes));
            attributes
        })
    }
}
