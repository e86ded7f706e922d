//! The gateway: one connection that subscribes `home/#`, enriches each JSON reading and
//! republishes it to `cloud/{device}/telemetry`. Its publish runs inside the handler, so its
//! PRODUCER span is a child of the gateway's `process home/#` span, which is a child of the
//! sensor's publish span: one trace runs sensor -> gateway -> collector.

use std::sync::Arc;

use rumqttc_opentelemetry::Instrumentation;
use serde_json::Value;

use super::Result;
use super::mqtt::{Connection, Handler, HandlerError, Incoming, Publisher, Subscriber};

/// The destination template of the forwarded readings.
pub const CLOUD_TEMPLATE: &str = "cloud/+/telemetry";

/// What the gateway does.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The connection (its client id names the gateway in the forwarded readings).
    pub connection: Connection,
    /// What it subscribes (default `home/#`).
    pub filter: String,
}

/// The instrumentation of the gateway: `cloud/+/telemetry` as publish template, and the
/// version's propagation.
pub fn instrumentation(
    config: &GatewayConfig,
    builder: rumqttc_opentelemetry::InstrumentationBuilder,
) -> Result<Instrumentation> {
    Ok(config
        .connection
        .version
        .configure(builder.publish_template(CLOUD_TEMPLATE)?)
        .build())
}

/// A topic level made of `text`: characters MQTT gives a meaning to (`/`, `+`, `#`, NUL) become
/// `_`.
pub fn topic_level(text: &str) -> String {
    let level: String = text
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if level.is_empty() {
        "_".to_owned()
    } else {
        level
    }
}

/// The forwarded message for a reading received on `topic`: the topic
/// `cloud/{device}/telemetry` and the enriched JSON. `device` is the reading's `sensor_id`, else
/// the topic's second level.
pub fn enrich(
    gateway_id: &str,
    topic: &str,
    payload: &[u8],
) -> Result<(String, Vec<u8>), HandlerError> {
    let mut reading: Value = serde_json::from_slice(payload)
        .map_err(|error| HandlerError(format!("reading on {topic} is not JSON: {error}")))?;
    let room = topic.split('/').nth(1).unwrap_or("unknown").to_owned();
    let Some(object) = reading.as_object_mut() else {
        return Err(HandlerError(format!(
            "reading on {topic} is not a JSON object"
        )));
    };
    let device = object
        .get("sensor_id")
        .and_then(Value::as_str)
        .map_or_else(|| room.clone(), str::to_owned);
    object.insert("room".into(), Value::from(room));
    object.insert("source_topic".into(), Value::from(topic));
    object.insert("gateway".into(), Value::from(gateway_id));
    object.insert("forwarded_at_ms".into(), Value::from(super::unix_millis()));
    let body = serde_json::to_vec(&reading).map_err(super::mqtt::handler_error)?;
    Ok((format!("cloud/{}/telemetry", topic_level(&device)), body))
}

fn handler(gateway_id: String, upstream: Publisher) -> Handler {
    let gateway_id: Arc<str> = Arc::from(gateway_id);
    Arc::new(move |message: Incoming| {
        let upstream = upstream.clone();
        let gateway_id = gateway_id.clone();
        Box::pin(async move {
            if message.retained {
                // A value stored before this gateway subscribed: it was forwarded when it was
                // published (by this gateway or its predecessor), so it is not sent twice.
                tracing::info!(topic = %message.topic, "retained reading not forwarded");
                return Ok(());
            }
            let (topic, body) = enrich(&gateway_id, &message.topic, &message.payload)?;
            // The publish is a child of this handler's `process` span. Waiting for the PUBACK
            // before returning means the incoming reading is acknowledged only once the cloud
            // side has it.
            upstream
                .publish_confirmed(topic.clone(), false, body)
                .await
                .map_err(super::mqtt::handler_error)?;
            tracing::info!(from = %message.topic, to = %topic, "forwarded");
            Ok(())
        })
    })
}

/// Starts the gateway and waits until it is subscribed. Fails when the broker does not answer
/// within the connection timeout.
pub async fn start(config: &GatewayConfig, instrumentation: Instrumentation) -> Result<Subscriber> {
    let gateway_id = config.connection.client_id.clone();
    let subscriber = Subscriber::start(
        &config.connection,
        instrumentation,
        &config.filter,
        // One reading at a time: the forwarded messages keep the order they arrived in.
        1,
        |upstream| handler(gateway_id, upstream),
    )?;
    subscriber.ready(&config.connection).await?;
    tracing::info!(
        broker = %config.connection.broker,
        filter = %config.filter,
        "gateway subscribed ({}); forwarding to {CLOUD_TEMPLATE}",
        config.connection.version
    );
    Ok(subscriber)
}
