//! The temperature sensor: publishes a JSON reading to `home/{room}/temperature` every interval,
//! retained (a new subscriber gets the last value at once), at QoS 1, with a last will that
//! marks the device offline if the connection drops.

use std::future::Future;
use std::time::Duration;

use rumqttc_opentelemetry::Instrumentation;
use serde_json::json;

use super::Result;
use super::mqtt::{Connection, Publisher, Will};

/// The destination template of the readings: span names and metrics say
/// `publish home/+/temperature`, not one name per room.
pub const READINGS_TEMPLATE: &str = "home/+/temperature";

/// The destination template of the status messages (`online`, `offline`, the last will).
pub const STATUS_TEMPLATE: &str = "device/+/status";

/// What the sensor does.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    /// The connection (its client id is the sensor id).
    pub connection: Connection,
    /// The room: readings go to `home/{room}/temperature`.
    pub room: String,
    /// The pause between readings.
    pub interval: Duration,
    /// How many readings, `None` for ever (until the `stop` future of [`run`] resolves).
    pub count: Option<u64>,
}

impl SensorConfig {
    /// The topic of the readings.
    pub fn topic(&self) -> String {
        format!("home/{}/temperature", self.room)
    }

    /// The status topic (`device/{id}/status`), where the last will goes.
    pub fn status_topic(&self) -> String {
        format!("device/{}/status", self.connection.client_id)
    }
}

/// The instrumentation of the sensor: `service`'s providers, the readings template, and the
/// version's propagation (the envelope for `--mqtt 3 --envelope`).
pub fn instrumentation(
    config: &SensorConfig,
    builder: rumqttc_opentelemetry::InstrumentationBuilder,
) -> Result<Instrumentation> {
    Ok(config
        .connection
        .version
        .configure(
            builder
                .publish_template(READINGS_TEMPLATE)?
                .publish_template(STATUS_TEMPLATE)?,
        )
        .build())
}

/// A made-up but plausible reading number `n`.
pub fn reading(sensor_id: &str, n: u64) -> serde_json::Value {
    let phase = n as f64 / 4.0;
    let temperature = 21.0 + 1.5 * phase.sin();
    let humidity = 45.0 + 5.0 * (phase / 2.0).cos();
    json!({
        "sensor_id": sensor_id,
        "temperature": (temperature * 10.0).round() / 10.0,
        "humidity": (humidity * 10.0).round() / 10.0,
        "timestamp": super::unix_seconds(),
    })
}

/// The last will: `{"status":"offline","reason":"connection lost"}`, retained, on the status
/// topic. The broker publishes it when the connection drops without DISCONNECT.
pub fn last_will(config: &SensorConfig) -> Will {
    Will {
        topic: config.status_topic(),
        payload: json!({ "status": "offline", "reason": "connection lost" })
            .to_string()
            .into_bytes(),
    }
}

/// Connects, publishes `online` to the status topic, then the readings, until `count` readings
/// are acknowledged or `stop` resolves; then publishes `offline` and shuts down cleanly (flush,
/// DISCONNECT), so no QoS 1 reading is lost. Returns how many readings the broker acknowledged.
///
/// Fails when the broker does not answer within the connection timeout.
pub async fn run(
    config: &SensorConfig,
    instrumentation: Instrumentation,
    stop: impl Future<Output = ()>,
) -> Result<u64> {
    let connection = &config.connection;
    let sensor_id = connection.client_id.clone();
    let will = last_will(config);
    let publisher = Publisher::start(connection, instrumentation, Some(&will));
    publisher.connected(connection).await?;
    tracing::info!(
        broker = %connection.broker,
        sensor = %sensor_id,
        topic = %config.topic(),
        "connected ({}); publishing a reading every {:?}",
        connection.version,
        config.interval
    );
    let online = json!({ "status": "online", "timestamp": super::unix_seconds() }).to_string();
    if let Err(error) = publisher
        .publish_confirmed(config.status_topic(), true, online)
        .await
    {
        tracing::warn!(%error, "status `online` not delivered");
    }

    let mut acknowledged = 0;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut n = 0;
    while config.count.is_none_or(|count| n < count) {
        tokio::select! {
            () = &mut stop => {
                tracing::info!("stopping");
                break;
            }
            _ = ticker.tick() => {}
        }
        n += 1;
        let payload = reading(&sensor_id, n).to_string();
        // Retained: the broker keeps the last value for new subscribers.
        match publisher
            .publish_confirmed(config.topic(), true, payload.clone())
            .await
        {
            Ok(()) => {
                acknowledged += 1;
                tracing::info!(reading = n, %payload, "published");
            }
            Err(error) => tracing::warn!(reading = n, %error, "reading not delivered"),
        }
    }

    // A clean shutdown: the broker discards the will on DISCONNECT, so say `offline` here.
    let offline = json!({ "status": "offline", "timestamp": super::unix_seconds() }).to_string();
    if let Err(error) = publisher
        .publish_confirmed(config.status_topic(), true, offline)
        .await
    {
        tracing::warn!(%error, "status `offline` not delivered");
    }
    publisher.flush().await;
    publisher.shutdown().await;
    tracing::info!(acknowledged, "disconnected");
    Ok(acknowledged)
}
